//! `reflex lake views`: SQL for the DuckDB CLI that creates two views per lake table.
//!
//! The lake keeps every Kafka record: exactly once per record, but a re-delivered or replayed
//! event is a second record with the same id, and so a second row. Each table therefore gets:
//!
//! - `<name>_raw`: every row of the table's files, one per Kafka record, told apart by
//!   `kafka_topic`, `kafka_partition` and `kafka_offset`.
//! - `<name>`: one row per event. For an event table, the **last record of each `id`**: the
//!   latest `kafka_timestamp`, then the latest `ingested_at`, then the highest offset (see
//!   [`LATEST_FIRST`]). A dead-lettered event that was replayed is thus its replayed record, the
//!   one that was actioned. For `audit`, the **latest record of each audit key** ([`AUDIT_KEY`]:
//!   the event id, or `topic/partition/offset` of an event without one), in the same order: the
//!   event's final outcome, the record the compacted audit topic keeps for that key.
//!
//! `sum(amount) FROM payment_authorized` then counts a replayed payment once;
//! `payment_authorized_raw` still shows both records.
//!
//! The raw views read the Parquet files with `hive_partitioning` (the `date` and `hour` columns
//! come from the paths, typed DATE and INTEGER) and `union_by_name` (files written before a
//! schema gained a field read together with newer ones). For an S3 store the SQL starts with the
//! `httpfs` extension and a secret built from the endpoint settings and the `AWS_*` environment.

use std::fmt::Write as _;

use super::table::TableKind;
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

/// The order that puts a key's latest record first: the latest Kafka timestamp (records
/// without one last), then the latest ingestion, then the highest offset. Topic and partition
/// only make the order total for records that tie on both times.
pub const LATEST_FIRST: &str = "kafka_timestamp DESC NULLS LAST, ingested_at DESC, \
     kafka_topic, kafka_partition, kafka_offset DESC";

/// The key of an event table's view: the event id, which every event has.
pub const EVENT_KEY: &str = "id";

/// The key of the audit view, as the actions role keys the audit topic
/// ([`crate::audit::AuditRecord::key`]): the event id, or `topic/partition/offset` of an event
/// without one. A row with neither (not written by reflex) is keyed by its own Kafka
/// coordinates, so it is kept rather than merged with other such rows.
pub const AUDIT_KEY: &str = "coalesce(event_id, \
     \"topic\" || '/' || CAST(\"partition\" AS VARCHAR) || '/' || CAST(\"offset\" AS VARCHAR), \
     kafka_topic || ':' || CAST(kafka_partition AS VARCHAR) || ':' || CAST(kafka_offset AS VARCHAR))";

/// The suffix of the view with every Kafka record of a table.
pub const RAW_SUFFIX: &str = "_raw";

/// A table as `reflex lake views` sees it.
#[derive(Debug, Clone)]
pub struct ListedTable {
    /// The table's name (the event type, or `audit`).
    pub name: String,
    /// What it holds, which decides the key of its view.
    pub kind: TableKind,
    /// Whether the store has files of it yet.
    pub has_files: bool,
}

/// The key expression of a table's view.
pub fn view_key(kind: &TableKind) -> &'static str {
    match kind {
        TableKind::Events => EVENT_KEY,
        TableKind::Audit => AUDIT_KEY,
    }
}

const HEADER: &str = "\
-- DuckDB views over the reflex lake; run with: duckdb -init <this file>
-- <table>_raw: every Kafka record of the table (a re-delivered or replayed event is two rows,
--   told apart by kafka_topic, kafka_partition, kafka_offset).
-- <table>: one row per event. Event tables keep the last record of each id (latest
--   kafka_timestamp, then ingested_at, then highest offset): for a replayed dead letter, the
--   replayed record that was actioned. audit keeps the latest record of each audit key (event_id,
--   or topic/partition/offset without one): the final outcome, as the compacted audit topic does.
";

/// The two `CREATE VIEW` statements of a table: every record, then one row per key.
fn statements(config: &LakeConfig, table: &ListedTable) -> [String; 2] {
    let name = view_name(&table.name);
    let raw = format!("{name}{RAW_SUFFIX}");
    let glob = quote(&table_glob(&config.location, &table.name));
    [
        format!(
            "CREATE OR REPLACE VIEW \"{raw}\" AS SELECT * FROM read_parquet({glob}, {READ_OPTIONS});"
        ),
        format!(
            "CREATE OR REPLACE VIEW \"{name}\" AS SELECT * FROM \"{raw}\" QUALIFY row_number() \
             OVER (PARTITION BY {} ORDER BY {LATEST_FIRST}) = 1;",
            view_key(&table.kind)
        ),
    ]
}

/// The SQL: the S3 secret if needed, then two views per table that has files (tables without
/// files yet are listed as comments, since DuckDB cannot create a view over no files).
pub fn sql<F>(config: &LakeConfig, tables: &[ListedTable], var: F) -> String
where
    F: Fn(&str) -> Option<String>,
{
    let mut out = String::from(HEADER);
    if let Some(secret) = s3_secret(config, var) {
        out.push_str(&secret);
    }
    for table in tables {
        for statement in statements(config, table) {
            if table.has_files {
                let _ = writeln!(out, "{statement}");
            } else {
                let _ = writeln!(out, "-- no files yet: {statement}");
            }
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

    fn listed(name: &str, kind: TableKind, has_files: bool) -> ListedTable {
        ListedTable {
            name: name.into(),
            kind,
            has_files,
        }
    }

    /// The statements of `sql`, without comments.
    fn statements_of(sql: &str) -> Vec<&str> {
        sql.lines().filter(|l| !l.starts_with("--")).collect()
    }

    #[test]
    fn every_record_in_the_raw_view_and_the_last_per_id_in_the_view() {
        let sql = sql(
            &config("file:///data/lake", ""),
            &[listed("order.placed", TableKind::Events, true)],
            |_| None,
        );
        assert_eq!(
            statements_of(&sql),
            [
                "CREATE OR REPLACE VIEW \"order_placed_raw\" AS SELECT * FROM read_parquet('/data/lake/order.placed/**/*.parquet', hive_partitioning = true, union_by_name = true, hive_types = {'date': DATE, 'hour': INTEGER});",
                "CREATE OR REPLACE VIEW \"order_placed\" AS SELECT * FROM \"order_placed_raw\" QUALIFY row_number() OVER (PARTITION BY id ORDER BY kafka_timestamp DESC NULLS LAST, ingested_at DESC, kafka_topic, kafka_partition, kafka_offset DESC) = 1;",
            ],
            "{sql}"
        );
        assert!(!sql.contains("SECRET"), "{sql}");
    }

    #[test]
    fn audit_view_keeps_the_latest_record_per_audit_key() {
        let sql = sql(
            &config("file:///data/lake", ""),
            &[listed("audit", TableKind::Audit, true)],
            |_| None,
        );
        let view = statements_of(&sql)[1];
        assert!(
            view.starts_with("CREATE OR REPLACE VIEW \"audit\" AS SELECT * FROM \"audit_raw\" QUALIFY row_number() OVER (PARTITION BY coalesce(event_id, \"topic\" || '/' || CAST(\"partition\" AS VARCHAR) || '/' || CAST(\"offset\" AS VARCHAR), kafka_topic || ':'"),
            "{view}"
        );
        assert!(
            view.ends_with(&format!("ORDER BY {LATEST_FIRST}) = 1;")),
            "{view}"
        );
    }

    #[test]
    fn tables_without_files_are_comments() {
        let sql = sql(
            &config("file:///data/lake", ""),
            &[
                listed("order.placed", TableKind::Events, true),
                listed("audit", TableKind::Audit, false),
            ],
            |_| None,
        );
        let commented: Vec<&str> = sql
            .lines()
            .filter_map(|l| l.strip_prefix("-- no files yet: "))
            .collect();
        assert_eq!(commented.len(), 2, "{sql}");
        assert!(
            commented[0].starts_with("CREATE OR REPLACE VIEW \"audit_raw\" AS SELECT * FROM read_parquet('/data/lake/audit/**/*.parquet'"),
            "{sql}"
        );
        assert!(
            commented[1]
                .starts_with("CREATE OR REPLACE VIEW \"audit\" AS SELECT * FROM \"audit_raw\""),
            "{sql}"
        );
        assert_eq!(statements_of(&sql).len(), 2, "{sql}");
    }

    #[test]
    fn the_printed_sql_says_which_row_each_view_keeps() {
        let sql = sql(&config("file:///data/lake", ""), &[], |_| None);
        for words in [
            "<table>_raw: every Kafka record",
            "last record of each id",
            "replayed record that was actioned",
            "latest record of each audit key",
        ] {
            assert!(sql.contains(words), "{words:?} in {sql}");
        }
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
            &[listed("audit", TableKind::Audit, true)],
            vars,
        );
        assert!(sql.contains("CREATE OR REPLACE SECRET reflex_lake (TYPE s3, REGION 'us-east-1', KEY_ID 'ak', SECRET 's''k', ENDPOINT '127.0.0.1:8014', USE_SSL false, URL_STYLE 'path');"), "{sql}");
        assert!(
            sql.contains("read_parquet('s3://bucket/lake/audit/**/*.parquet'"),
            "{sql}"
        );
    }
}
