//! `reflex lake views`: SQL for the DuckDB CLI that creates one view per lake table.
//!
//! Each view reads the table's Parquet files with `hive_partitioning` (the `date` and `hour`
//! columns come from the paths, typed DATE and INTEGER) and `union_by_name` (files written before a schema gained a
//! field read together with newer ones). For an S3 store the SQL starts with the `httpfs`
//! extension and a secret built from the endpoint settings and the `AWS_*` environment.

use std::fmt::Write as _;

use crate::config::{LakeConfig, StoreLocation};

/// A view's name: the table name with every character that is not a letter, digit or `_`
/// replaced by `_` (`order.placed` → `order_placed`).
pub fn view_name(table: &str) -> String {
    table
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// How every view reads its files.
pub const READ_OPTIONS: &str =
    "hive_partitioning = true, union_by_name = true, hive_types = {'date': DATE, 'hour': INTEGER}";

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The glob of a table's files as DuckDB reads it.
pub fn table_glob(location: &StoreLocation, table: &str) -> String {
    match location {
        StoreLocation::Local(dir) => {
            let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
            format!("{}/{table}/**/*.parquet", dir.display())
        }
        StoreLocation::S3 { bucket, prefix } if prefix.is_empty() => {
            format!("s3://{bucket}/{table}/**/*.parquet")
        }
        StoreLocation::S3 { bucket, prefix } => {
            format!("s3://{bucket}/{prefix}/{table}/**/*.parquet")
        }
    }
}

/// The `CREATE SECRET` statement for an S3 store (credentials from `vars`, the process
/// environment in practice); `None` for a local store.
pub fn s3_secret<F>(config: &LakeConfig, var: F) -> Option<String>
where
    F: Fn(&str) -> Option<String>,
{
    let StoreLocation::S3 { .. } = config.location else {
        return None;
    };
    let mut options = vec![
        "TYPE s3".to_owned(),
        format!("REGION {}", quote(&config.s3_region)),
    ];
    if let (Some(key), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        options.push(format!("KEY_ID {}", quote(&key)));
        options.push(format!("SECRET {}", quote(&secret)));
    }
    if let Some(token) = var("AWS_SESSION_TOKEN") {
        options.push(format!("SESSION_TOKEN {}", quote(&token)));
    }
    if !config.s3_endpoint.is_empty() {
        let (ssl, host) = match config.s3_endpoint.split_once("://") {
            Some((scheme, host)) => (scheme == "https", host),
            None => (true, config.s3_endpoint.as_str()),
        };
        options.push(format!("ENDPOINT {}", quote(host.trim_end_matches('/'))));
        options.push(format!("USE_SSL {ssl}"));
    }
    if config.s3_path_style {
        options.push("URL_STYLE 'path'".to_owned());
    }
    Some(format!(
        "INSTALL httpfs;\nLOAD httpfs;\nCREATE OR REPLACE SECRET reflex_lake ({});\n",
        options.join(", ")
    ))
}

/// The SQL: the S3 secret if needed, then one view per table that has files (tables without
/// files yet are listed as comments, since DuckDB cannot create a view over no files).
pub fn sql<F>(config: &LakeConfig, tables: &[(String, bool)], var: F) -> String
where
    F: Fn(&str) -> Option<String>,
{
    let mut out =
        String::from("-- DuckDB views over the reflex lake; run with: duckdb -init <this file>\n");
    if let Some(secret) = s3_secret(config, var) {
        out.push_str(&secret);
    }
    for (table, has_files) in tables {
        let glob = quote(&table_glob(&config.location, table));
        let statement = format!(
            "CREATE OR REPLACE VIEW \"{}\" AS SELECT * FROM read_parquet({glob}, {READ_OPTIONS});",
            view_name(table)
        );
        if *has_files {
            let _ = writeln!(out, "{statement}");
        } else {
            let _ = writeln!(out, "-- no files yet: {statement}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RawLake, RawLakeRole};
    use std::path::Path;

    fn config(store: &str, endpoint: &str) -> LakeConfig {
        let mut raw = RawLake {
            store: store.into(),
            ..RawLake::default()
        };
        raw.s3.endpoint = endpoint.into();
        LakeConfig::new(raw, RawLakeRole::default(), Path::new("/nonexistent")).expect("valid")
    }

    #[test]
    fn local_views_per_table() {
        let sql = sql(
            &config("file:///data/lake", ""),
            &[("order.placed".into(), true), ("audit".into(), false)],
            |_| None,
        );
        assert!(sql.contains("CREATE OR REPLACE VIEW \"order_placed\" AS SELECT * FROM read_parquet('/data/lake/order.placed/**/*.parquet', hive_partitioning = true, union_by_name = true, hive_types = {'date': DATE, 'hour': INTEGER});"), "{sql}");
        assert!(
            sql.contains("-- no files yet: CREATE OR REPLACE VIEW \"audit\""),
            "{sql}"
        );
        assert!(!sql.contains("SECRET"), "{sql}");
    }

    #[test]
    fn s3_views_carry_a_secret() {
        let vars = |name: &str| match name {
            "AWS_ACCESS_KEY_ID" => Some("ak".to_owned()),
            "AWS_SECRET_ACCESS_KEY" => Some("s'k".to_owned()),
            _ => None,
        };
        let sql = sql(
            &config("s3://bucket/lake", "http://127.0.0.1:8014"),
            &[("audit".into(), true)],
            vars,
        );
        assert!(sql.contains("CREATE OR REPLACE SECRET reflex_lake (TYPE s3, REGION 'us-east-1', KEY_ID 'ak', SECRET 's''k', ENDPOINT '127.0.0.1:8014', USE_SSL false, URL_STYLE 'path');"), "{sql}");
        assert!(
            sql.contains("read_parquet('s3://bucket/lake/audit/**/*.parquet'"),
            "{sql}"
        );
    }
}
