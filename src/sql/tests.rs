//! #[pg_test]s: the Datum step and the settings, inside a real backend, without the network.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;
    use pgrx::{pg_sys, JsonB};
    use serde_json::json;

    use crate::error::SqlState;
    use crate::extract::RowPath;
    use crate::sql::rows::RowMaker;

    fn type_oid(name: &str) -> pg_sys::Oid {
        Spi::get_one::<pg_sys::Oid>(&format!("SELECT '{name}'::regtype::oid"))
            .unwrap()
            .unwrap()
    }

    fn composite(
        maker: &mut RowMaker,
        row: serde_json::Value,
    ) -> PgHeapTuple<'static, AllocatedByRust> {
        let datum = maker
            .make(1, &row)
            .unwrap()
            .expect("a composite row is never NULL");
        unsafe { PgHeapTuple::from_composite_datum(datum) }
    }

    #[pg_test]
    fn keys_match_exactly_then_ignoring_case() {
        Spi::run("CREATE TABLE people (id bigint, \"Name\" text, name text, email text)").unwrap();
        let mut maker = RowMaker::new(type_oid("people"), vec![]).unwrap();
        let row = composite(
            &mut maker,
            json!({"ID": 9007199254740993_i64, "Name": "exact", "EMAIL": "e@x"}),
        );
        assert_eq!(
            row.get_by_name::<i64>("id").unwrap(),
            Some(9007199254740993)
        );
        assert_eq!(
            row.get_by_name::<String>("Name").unwrap().as_deref(),
            Some("exact")
        );
        // "name" has no exact key; "Name" matches it ignoring case.
        assert_eq!(
            row.get_by_name::<String>("name").unwrap().as_deref(),
            Some("exact")
        );
        assert_eq!(
            row.get_by_name::<String>("email").unwrap().as_deref(),
            Some("e@x")
        );
    }

    #[pg_test]
    fn columns_paths_and_dropped_columns() {
        Spi::run(
            "CREATE TABLE evolved (a int, gone int, b text); ALTER TABLE evolved DROP COLUMN gone",
        )
        .unwrap();
        let columns = vec![(
            "b".to_string(),
            crate::spec::ColumnSource::Path(RowPath::parse("$.deep.b").unwrap()),
        )];
        let mut maker = RowMaker::new(type_oid("evolved"), columns).unwrap();
        let row = composite(
            &mut maker,
            json!({"a": 1, "gone": 2, "deep": {"b": "x"}, "b": "top"}),
        );
        assert_eq!(row.get_by_name::<i32>("a").unwrap(), Some(1));
        assert_eq!(
            row.get_by_name::<String>("b").unwrap().as_deref(),
            Some("x")
        );
    }

    #[pg_test]
    fn scalar_row_types_and_nulls() {
        let mut maker = RowMaker::new(pg_sys::INT8OID, vec![]).unwrap();
        let datum = maker.make(1, &json!("-12")).unwrap().unwrap();
        assert_eq!(unsafe { i64::from_datum(datum, false) }, Some(-12));
        assert_eq!(maker.make(2, &json!(null)).unwrap(), None);
        let mut jsonb = RowMaker::new(pg_sys::JSONBOID, vec![]).unwrap();
        // Parsed from text, as a response is: the number keeps its digits.
        let row: serde_json::Value = serde_json::from_str(r#"{"a": [1.50, "x"]}"#).unwrap();
        let datum = jsonb.make(1, &row).unwrap().unwrap();
        let value = unsafe { JsonB::from_datum(datum, false) }.unwrap().0;
        assert_eq!(value.to_string(), r#"{"a":[1.50,"x"]}"#);
    }

    #[pg_test]
    fn conversion_errors_keep_the_postgres_sqlstate() {
        Spi::run("CREATE DOMAIN positive AS int CHECK (VALUE > 0); CREATE TABLE checked (p positive, t text)")
            .unwrap();
        let mut maker = RowMaker::new(type_oid("checked"), vec![]).unwrap();
        let err = maker.make(4, &json!({"p": -1})).unwrap_err();
        assert_eq!(err.state.code(), "23514");
        assert_eq!(
            err.message,
            "api_fetch row 4, column \"p\": cannot convert -1 to positive"
        );
        let err = maker.make(5, &json!({"t": "a\u{0}b"})).unwrap_err();
        assert_eq!(err.state.code(), "22P05");
        let err = maker.make(6, &json!([1, 2])).unwrap_err();
        assert_eq!(err.state, SqlState::DatatypeMismatch);
        assert!(
            err.message
                .starts_with("api_fetch row 6 is an array, not an object"),
            "{}",
            err.message
        );
    }

    #[pg_test]
    fn settings_have_documented_defaults() {
        let show = |name: &str| {
            Spi::get_one::<String>(&format!("SHOW {name}"))
                .unwrap()
                .unwrap()
        };
        assert_eq!(show("apisync.http_timeout_ms"), "30s");
        assert_eq!(show("apisync.max_response_bytes"), "64MB");
        assert_eq!(
            show("apisync.user_agent"),
            concat!("pg_apisync/", env!("CARGO_PKG_VERSION"))
        );
    }

    #[pg_test(error = "unsupported URL scheme \"gopher\": only http and https are allowed")]
    fn api_fetch_rejects_a_scheme_before_any_request() {
        Spi::run("SELECT * FROM api_fetch('gopher://127.0.0.1/x')").unwrap();
    }
}
