//! `apisync-devapi [--port N]`: serves the demo API on 127.0.0.1 until killed.

fn main() {
    let mut args = std::env::args().skip(1);
    let mut port: u16 = 8080;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => {
                port = args.next().and_then(|p| p.parse().ok()).unwrap_or_else(|| {
                    eprintln!("--port needs a number");
                    std::process::exit(2)
                })
            }
            other => {
                eprintln!("unknown argument {other}; usage: apisync-devapi [--port N]");
                std::process::exit(2)
            }
        }
    }
    let api = devapi::DevApi::start(port).unwrap_or_else(|e| {
        eprintln!("cannot listen on 127.0.0.1:{port}: {e}");
        std::process::exit(1)
    });
    println!("devapi listening on http://{}", api.addr());
    api.wait();
}
