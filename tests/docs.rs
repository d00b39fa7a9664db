//! The docs/ pages' examples as tests, so that none rots: each page in a database of its own,
//! its ```sql blocks in order through psql (as a reader would paste them), against devapi standing
//! in for the APIs the pages name. A block followed by a ```text block must print exactly that
//! (psql's aligned output, without command tags). `APISYNC_DOCS_ACCEPT=1` writes what the blocks
//! print into those text blocks instead. A page that says `<!-- docs test: Citus -->` runs in the
//! Citus tier; the others in the integration tier.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{api, bindir, Cluster};

/// The marker of a page whose examples need a Citus cluster.
const CITUS_MARK: &str = "<!-- docs test: Citus -->";

/// The addresses the pages use, and where devapi serves the same shapes.
const STAND_INS: &[(&str, &str)] = &[
    ("https://api.github.com/repos", "/repos"),
    ("https://api.github.com", "/github"),
    ("https://api.stripe.com/v1", "/stripe"),
    (
        "https://fdl.example.com/webroot/service/publish/3f2a",
        "/api",
    ),
    ("https://login.crm.example.com/oauth", "/rotating"),
    ("https://api.crm.example.com", "/rotating"),
    ("https://app.example.com/api", "/drf"),
    ("https://reports.example.com", "/export"),
    ("https://api.example.com", ""),
    ("http://127.0.0.1:8080", ""),
];

/// One example: its SQL, and the output it must print, if the page shows one.
struct Example {
    sql: String,
    expected: Option<String>,
    /// Where the text block's body is in the page (for APISYNC_DOCS_ACCEPT).
    text_at: Option<(usize, usize)>,
}

fn examples(page: &str) -> Vec<Example> {
    let mut found: Vec<Example> = Vec::new();
    let mut rest = 0;
    while let Some(open) = page[rest..].find("```") {
        let open = rest + open;
        let info_end = open + page[open..].find('\n').expect("a fence line");
        let info = page[open + 3..info_end].trim();
        let body_start = info_end + 1;
        let close = body_start + page[body_start..].find("```").expect("a closing fence");
        let body = &page[body_start..close];
        match info {
            "sql" => found.push(Example {
                sql: body.to_string(),
                expected: None,
                text_at: None,
            }),
            "text" => {
                // Output belongs to the sql block right before it (only blank lines between).
                let between = found.last().map(|_| &page[rest..open]);
                if let (Some(last), Some(between)) = (found.last_mut(), between) {
                    if between.trim().is_empty() && last.expected.is_none() {
                        last.expected = Some(body.to_string());
                        last.text_at = Some((body_start, close));
                    }
                }
            }
            _ => {}
        }
        rest = close + 3;
    }
    found
}

/// What psql prints for `sql` in `database` of `cluster`, with the page's addresses pointed at
/// devapi.
fn psql(cluster: &Cluster, database: &str, sql: &str) -> Result<String, String> {
    let mut sql = sql.to_string();
    for (address, path) in STAND_INS {
        sql = sql.replace(address, &api().url(path));
    }
    let port = cluster.port.to_string();
    let out = Command::new(bindir().join("psql"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            database,
        ])
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-P", "pager=off"])
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("psql's stdin")
                .write_all(sql.as_bytes())?;
            child.wait_with_output()
        })
        .expect("psql runs");
    let stdout =
        String::from_utf8_lossy(&out.stdout).replace(&api().url(""), "http://127.0.0.1:8080");
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// The pages of docs/ that have SQL examples, by name; `citus` chooses the pages of the Citus
/// tier or the others.
pub fn pages(citus: bool) -> Vec<PathBuf> {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs"));
    let mut pages: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("docs/")
        .map(|e| e.expect("an entry of docs/").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            text.contains("```sql") && text.contains(CITUS_MARK) == citus
        })
        .collect();
    pages.sort();
    pages
}

/// Runs `page`'s examples in `database` of `cluster` (which has pg_apisync), checking every
/// output it shows (or, with APISYNC_DOCS_ACCEPT, writing them); the number of examples run.
pub fn check(page: &Path, cluster: &Cluster, database: &str) -> usize {
    let accept = std::env::var_os("APISYNC_DOCS_ACCEPT").is_some();
    let text = std::fs::read_to_string(page).unwrap();
    let examples = examples(&text);
    let mut rewritten = text.clone();
    let mut outputs = Vec::new();
    for example in &examples {
        let printed = psql(cluster, database, &example.sql).unwrap_or_else(|e| {
            panic!(
                "{}: an example fails:\n{}\n{e}",
                page.display(),
                example.sql
            )
        });
        if let Some(expected) = &example.expected {
            if !accept {
                assert_eq!(
                    printed.trim_end(),
                    expected.trim_end(),
                    "{}: what this prints is not what the page shows:\n{}",
                    page.display(),
                    example.sql
                );
            }
            outputs.push((example.text_at.unwrap(), printed));
        }
    }
    if accept {
        for ((start, end), printed) in outputs.into_iter().rev() {
            rewritten.replace_range(start..end, &format!("{}\n", printed.trim_end()));
        }
        std::fs::write(page, rewritten).unwrap();
    }
    examples.len()
}
