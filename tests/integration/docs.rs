//! Every SQL example in docs/ runs and prints what its page shows (`harness::docs`), each page in
//! a database of its own in the shared cluster; the Citus page runs in the Citus tier.

use super::*;
use harness::{cluster, docs};

#[test]
fn every_sql_example_in_docs_runs_and_prints_what_the_page_shows() {
    let mut checked = 0;
    for page in docs::pages(false) {
        let stem = page
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .replace('-', "_")
            .to_lowercase();
        let database = format!("docs_{stem}");
        connect()
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .unwrap();
        cluster()
            .connect_to(&database, "postgres")
            .batch_execute("CREATE EXTENSION pg_apisync")
            .unwrap();
        checked += docs::check(&page, cluster(), &database);
    }
    assert!(checked >= 20, "only {checked} examples in docs/");
}
