//! A throwaway PostgreSQL 15 cluster with pg_apisync preloaded, run as the `postgres` user on a
//! free port, and the devapi server on loopback: what the integration tests drive.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub mod docs;

pub use devapi::DevApi;
pub use postgres::{Client, NoTls};

/// Where Debian puts PostgreSQL 15; `PG_BINDIR` overrides.
pub fn bindir() -> PathBuf {
    std::env::var_os("PG_BINDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// A running cluster; stopped and removed at process exit.
pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static API: OnceLock<DevApi> = OnceLock::new();
/// The data directories to stop and remove at exit (the statics above are never dropped).
static CLEANUP: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The shared cluster of this test binary, with `CREATE EXTENSION pg_apisync` done.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        let cluster = Cluster::start();
        let mut client = cluster.connect();
        client
            .batch_execute(
                "CREATE EXTENSION pg_apisync;
                 CREATE ROLE api_user LOGIN;
                 CREATE ROLE plain_user LOGIN;
                 CREATE ROLE other_user LOGIN;
                 GRANT CREATE ON SCHEMA public TO api_user, other_user;
                 GRANT EXECUTE ON FUNCTION api_fetch(text, text, jsonb, text, jsonb, jsonb, jsonb, anyelement, jsonb) TO other_user;
                 GRANT EXECUTE ON FUNCTION api_fetch(text, text, jsonb, text, jsonb, jsonb, jsonb, anyelement, jsonb) TO api_user;
                 GRANT EXECUTE ON FUNCTION api_request(text, text, jsonb, jsonb, jsonb) TO api_user;",
            )
            .expect("CREATE EXTENSION pg_apisync");
        cluster
    })
}

/// A cluster of the calling test's own, for faults that would disturb the others (restarts,
/// dropped databases), with `CREATE EXTENSION pg_apisync` done; stopped at exit.
pub fn private_cluster() -> Cluster {
    let cluster = Cluster::start();
    cluster
        .connect()
        .batch_execute("CREATE EXTENSION pg_apisync")
        .expect("CREATE EXTENSION pg_apisync");
    cluster
}

/// The shared devapi server of this test binary.
pub fn api() -> &'static DevApi {
    API.get_or_init(|| DevApi::start(0).expect("devapi starts on loopback"))
}

/// A new superuser connection to the shared cluster.
pub fn connect() -> Client {
    cluster().connect()
}

/// A new connection as `role`.
pub fn connect_as(role: &str) -> Client {
    cluster().connect_as(role)
}

/// Asks `ready` again every 50 ms until it gives a value, for at most `seconds`; `None` when it
/// never did. For what another process does in its own time (a scheduler's tick, a worker started
/// again, a reload, a fetch under way): how soon depends on the machine's load, so tests wait for
/// it rather than sleep a guess.
pub fn poll<T>(seconds: u64, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(value) = ready() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`poll`] for a condition: whether `ready` came true within `seconds`.
pub fn wait_until(seconds: u64, mut ready: impl FnMut() -> bool) -> bool {
    poll(seconds, || ready().then_some(())).is_some()
}

/// Runs `sql` as a superuser on the shared cluster, in one transaction that first takes the
/// tests' grant lock. GRANT, REVOKE and DROP OWNED rewrite an object's catalog row (api_fetch's in
/// pg_proc, schema public's in pg_namespace) without locking it first, and Postgres fails the
/// second of two concurrent rewrites with "tuple concurrently updated": the tests that change the
/// shared database's grants take turns.
pub fn change_grants(sql: &str) {
    connect()
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock(7070, 1); {sql}; COMMIT"
        ))
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A new superuser connection that collects NOTICEs and WARNINGs.
pub fn connect_collecting() -> (Client, Arc<Mutex<Vec<String>>>) {
    cluster().connect_collecting("postgres")
}

impl Cluster {
    fn start() -> Cluster {
        Cluster::start_with("pg_apisync,pg_cron")
    }

    /// A new cluster whose shared_preload_libraries is `preload`.
    pub fn start_with(preload: &str) -> Cluster {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("apisync-it-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the data directory");
        as_postgres_owner(&dir);
        run_as_postgres(
            Command::new(bindir().join("initdb"))
                .args(["-D"])
                .arg(&dir)
                .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale"]),
            "initdb",
        );
        let conf = format!(
            "port = {port}\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             shared_preload_libraries = '{preload}'\n\
             cron.database_name = 'postgres'\n\
             cron.host = '{}'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             max_connections = 50\n\
             max_worker_processes = 16\n",
            dir.display(),
            dir.display()
        );
        append(&dir.join("postgresql.conf"), &conf);
        Cluster::launch(dir, port)
    }

    /// A streaming standby of this cluster (pg_basebackup -R), started on a port of its own.
    pub fn standby(&self) -> Cluster {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("apisync-it-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        run_as_postgres(
            Command::new(bindir().join("pg_basebackup"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                ])
                .args(["-X", "stream", "-R", "-D"])
                .arg(&dir),
            "pg_basebackup",
        );
        append(
            &dir.join("postgresql.conf"),
            &format!(
                "port = {port}\nunix_socket_directories = '{}'\n",
                dir.display()
            ),
        );
        Cluster::launch(dir, port)
    }

    /// Starts the cluster in `dir`, to be stopped and removed at exit.
    fn launch(dir: PathBuf, port: u16) -> Cluster {
        let mut cleanup = CLEANUP.lock().unwrap();
        if cleanup.is_empty() {
            // SAFETY: registering a plain extern "C" fn without captures.
            unsafe { libc::atexit(stop_at_exit) };
        }
        cleanup.push(dir.clone());
        drop(cleanup);
        let cluster = Cluster { dir, port };
        cluster.start_again();
        cluster
    }

    /// `pg_ctl` on this cluster, its log in server.log; the last argument is the action.
    fn pg_ctl(&self, args: &[&str]) {
        run_as_postgres(
            Command::new(bindir().join("pg_ctl"))
                .args(["-D"])
                .arg(&self.dir)
                .args(["-l"])
                .arg(self.dir.join("server.log"))
                .args(args),
            &format!("pg_ctl {}", args.last().unwrap_or(&"")),
        );
    }

    pub fn connect(&self) -> Client {
        self.connect_as("postgres")
    }

    /// `pg_ctl restart -m fast`: every session and worker ends, the launcher starts again.
    pub fn restart(&self) {
        self.pg_ctl(&["-m", "fast", "-w", "-t", "60", "restart"]);
    }

    /// `pg_ctl stop -m immediate`: the node is gone at once, as when its machine fails.
    pub fn kill(&self) {
        self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
    }

    /// Starts the (stopped) cluster.
    pub fn start_again(&self) {
        self.pg_ctl(&["-w", "-t", "60", "start"]);
    }

    pub fn connect_as(&self, role: &str) -> Client {
        self.connect_with(role, |_| {})
    }

    /// A connection as `role` whose NOTICEs and WARNINGs land in the returned list.
    pub fn connect_collecting(&self, role: &str) -> (Client, Arc<Mutex<Vec<String>>>) {
        let notices = Arc::new(Mutex::new(Vec::new()));
        let sink = notices.clone();
        let client = self.connect_with(role, move |config| {
            let sink = sink.clone();
            config.notice_callback(move |notice| {
                sink.lock()
                    .unwrap()
                    .push(format!("{}: {}", notice.severity(), notice.message()))
            });
        });
        (client, notices)
    }

    /// A new connection as `role` to `database`.
    pub fn connect_to(&self, database: &str, role: &str) -> Client {
        self.connect_with_to(database, role, |_| {})
    }

    fn connect_with(&self, role: &str, adjust: impl Fn(&mut postgres::Config)) -> Client {
        self.connect_with_to("postgres", role, adjust)
    }

    fn connect_with_to(
        &self,
        database: &str,
        role: &str,
        adjust: impl Fn(&mut postgres::Config),
    ) -> Client {
        let text = format!(
            "host=127.0.0.1 port={} user={role} dbname={database}",
            self.port
        );
        let mut config: postgres::Config = text.parse().expect("a connection string");
        adjust(&mut config);
        for attempt in 0.. {
            match config.connect(NoTls) {
                Ok(client) => return client,
                Err(_) if attempt < 50 => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => panic!("cannot connect to the test cluster: {e}"),
            }
        }
        unreachable!()
    }

    /// The server log, for diagnosing a failure.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

extern "C" fn stop_at_exit() {
    let dirs = CLEANUP
        .lock()
        .map(|mut d| std::mem::take(&mut *d))
        .unwrap_or_default();
    for dir in dirs {
        let _ = run_quietly_as_postgres(
            Command::new(bindir().join("pg_ctl"))
                .args(["-D"])
                .arg(&dir)
                .args(["-m", "immediate", "stop"]),
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Postgres refuses to run as root: as root, the cluster belongs to `postgres`.
fn as_postgres_owner(dir: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "chown {} to postgres",
            dir.display()
        );
    }
}

fn wrap(command: &Command) -> Command {
    if is_root() {
        let mut wrapped = Command::new("runuser");
        wrapped
            .args(["-u", "postgres", "--"])
            .arg(command.get_program())
            .args(command.get_args());
        wrapped
    } else {
        let mut same = Command::new(command.get_program());
        same.args(command.get_args());
        same
    }
}

fn run_as_postgres(command: &mut Command, what: &str) {
    let output = wrap(command)
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn run_quietly_as_postgres(command: &mut Command) -> std::io::Result<std::process::Output> {
    wrap(command).output()
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open postgresql.conf");
    file.write_all(text.as_bytes())
        .expect("write postgresql.conf");
}

/// The SQLSTATE and message of a failed statement, for asserting errors as a user sees them.
pub fn sql_error(
    result: Result<impl std::fmt::Debug, postgres::Error>,
) -> (String, String, String) {
    let err = result.expect_err("the statement should fail");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {err}"));
    (
        db.code().code().to_string(),
        db.message().to_string(),
        db.detail().unwrap_or_default().to_string(),
    )
}

/// SQL text literal.
pub fn lit(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A Citus cluster on loopback: a coordinator and two workers, each with
/// `shared_preload_libraries = 'citus,pg_apisync'`, the workers registered, pg_apisync created on
/// the coordinator (Citus propagates it to the workers). Needs Citus installed
/// (`scripts/citus.sh`).
pub struct Citus {
    pub coordinator: Cluster,
    pub workers: Vec<Cluster>,
}

static CITUS: OnceLock<Citus> = OnceLock::new();

/// The shared Citus cluster of this test binary.
pub fn citus() -> &'static Citus {
    CITUS.get_or_init(Citus::start)
}

impl Citus {
    /// A new Citus cluster, for a test whose faults (a node stopped) would disturb the others.
    pub fn start() -> Citus {
        let nodes: Vec<Cluster> = (0..3)
            .map(|_| Cluster::start_with("citus,pg_apisync"))
            .collect();
        for node in &nodes {
            node.connect()
                .batch_execute("CREATE EXTENSION citus")
                .expect("CREATE EXTENSION citus (is Citus installed? scripts/citus.sh)");
        }
        let mut nodes = nodes.into_iter();
        let coordinator = nodes.next().unwrap();
        let workers: Vec<Cluster> = nodes.collect();
        let mut client = coordinator.connect();
        client
            .execute(
                "SELECT citus_set_coordinator_host('127.0.0.1', $1)",
                &[&i32::from(coordinator.port)],
            )
            .expect("citus_set_coordinator_host");
        for worker in &workers {
            client
                .execute(
                    "SELECT citus_add_node('127.0.0.1', $1)",
                    &[&i32::from(worker.port)],
                )
                .expect("citus_add_node");
        }
        client
            .batch_execute(
                "CREATE EXTENSION pg_apisync;
                 CREATE ROLE api_user LOGIN;
                 GRANT EXECUTE ON FUNCTION api_fetch(text, text, jsonb, text, jsonb, jsonb, jsonb, anyelement, jsonb) TO api_user;
                 GRANT EXECUTE ON FUNCTION api_request(text, text, jsonb, jsonb, jsonb) TO api_user;",
            )
            .expect("pg_apisync on the coordinator");
        Citus {
            coordinator,
            workers,
        }
    }
}
