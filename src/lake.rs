//! The data lake: valid events and audit records as Parquet files on an object store.
//!
//! The lake role ([`crate::role::lake::run`]) reads the event topics and the audit topic in its own consumer
//! group. Each valid event becomes a row of its type's table, each audit record a row of the
//! `audit` table. Records that the actions role dead-letters (undecodable, unknown type,
//! schema-invalid, too large) are not lake rows: they are in the dead-letter topic, and their
//! audit records, which say why, are in the `audit` table.
//!
//! Files are laid out for DuckDB's hive partitioning:
//! `<root>/<table>/date=YYYY-MM-DD/hour=HH/<topic>-<partition>-<first offset>.parquet`, by the
//! event's own time (the audit record's `processed_at` for the audit table), in UTC.
//!
//! Exactly once: rows are buffered per Kafka partition in [`segment`]s; a segment is written as
//! whole files, and only then is the offset after it committed. See [`segment`] for why a replay
//! after a crash rewrites the same files instead of adding rows.
//!
//! Redaction: an event's row leaves out the fields that the policy's redaction rule names for
//! it, the same paths the actions role removes from the action body and emitted events and
//! records in the audit record. The rule reads only the event, so the lake evaluates it alone,
//! never the full decision; when it cannot be decided the row is written without `data`.
//!
//! Exactly once is per Kafka record. The actions role is at-least-once, so after one of its
//! crashes the audit topic may hold two records for one event (compaction keeps the last), and a
//! replayed or re-delivered event is a second record with the same id; the files keep every
//! record. The views that `reflex lake views` writes ([`views`]) give one row per event (its
//! last record, and for `audit` its latest record, the final outcome) beside `<table>_raw`
//! views with every record.
//!
//! An unreachable store stalls the worker with its buffered rows and is retried; see
//! [`outage`].
//!
//! Finding one event: every file's id column (`id`, `event_id` in `audit`) has a bloom filter
//! per row group, and [`find`] reads a file's rows only where its statistics and bloom filters
//! allow the id (`reflex trace`).

mod audit_record;
pub mod encode;
pub mod evolution;
pub mod find;
pub mod outage;
pub mod rows;
pub mod segment;
pub mod shape;
pub mod store;
pub mod table;
pub mod views;
pub mod write;

use std::collections::HashMap;

use crate::config::Config;
use crate::kafka::KafkaSetupError;
use crate::schema::SchemaRegistry;
use encode::EncodeError;
use store::{LakeStore, StoreError};
use table::Table;

/// Why the lake role or a lake command failed.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// The consumer hit an error it cannot recover from.
    #[error(transparent)]
    ConsumerFatal(crate::kafka::ConsumerFatal),
    /// The telemetry listener could not start.
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::ListenError),
    /// Tracing was asked for and cannot start.
    #[error(transparent)]
    Tracing(#[from] crate::otel::TraceError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Rows could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A schema changed the type of a column the lake already has.
    #[error("table \"{table}\" in {location}: {changes}; the existing files would no longer read together with new ones. Keep the old type, or add the value under a new property name")]
    TypeChanged {
        /// The table.
        table: String,
        /// The store.
        location: String,
        /// The changes, described.
        changes: String,
    },
    /// A Kafka client could not be set up.
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    /// Subscribing failed.
    #[error("cannot subscribe to {topics:?}: {source}")]
    Subscribe {
        /// The topics.
        topics: Vec<String>,
        /// librdkafka's error.
        source: rdkafka::error::KafkaError,
    },
    /// A writer found its file's name taken by a file with other records.
    #[error("lake file {key} in {location} holds other records than this worker's rows of {topic} partition {partition} from offset {first}: {differs}. Another writer named different data the same way (a bug); the file was left as it is and the offsets were not committed. Compare the file with the topic before moving it away, then start the worker again")]
    FileConflict {
        /// The file's key under the lake root.
        key: String,
        /// The store.
        location: String,
        /// The partition's topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The offset of the worker's first row for the file.
        first: i64,
        /// What differs.
        differs: String,
    },
    /// The encoding task panicked or was cancelled.
    #[error("encoding task for table \"{table}\" failed: {message}")]
    Task {
        /// The table.
        table: String,
        /// What happened.
        message: String,
    },
}

/// The lake's tables: one per event type with a schema, and `audit`.
#[derive(Debug, Clone)]
pub struct Tables {
    tables: Vec<Table>,
    by_type: HashMap<String, usize>,
}

impl Tables {
    /// The tables of every schema in `schemas`, then `audit`.
    pub fn new(schemas: &SchemaRegistry) -> Self {
        let mut tables: Vec<Table> = schemas
            .types()
            .filter_map(|ty| schemas.schema(ty).map(|s| Table::events(ty, s)))
            .collect();
        let by_type = tables
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        tables.push(Table::audit());
        Self { tables, by_type }
    }

    /// The index of an event type's table.
    pub fn index_of(&self, ty: &str) -> Option<usize> {
        self.by_type.get(ty).copied()
    }

    /// The index of the audit table.
    pub fn audit_index(&self) -> usize {
        self.tables.len() - 1
    }

    /// The table at `index`.
    pub fn get(&self, index: usize) -> Option<&Table> {
        self.tables.get(index)
    }

    /// Every table.
    pub fn iter(&self) -> impl Iterator<Item = &Table> {
        self.tables.iter()
    }
}

/// Refuses a schema that changes the type of a column the lake's newest file of the table has.
pub async fn check_evolution(store: &LakeStore, tables: &Tables) -> Result<(), LakeError> {
    for table in tables.iter() {
        let Some(existing) = store.newest_schema(&table.name).await? else {
            continue;
        };
        let changes = evolution::type_changes(existing.fields(), table.schema.fields());
        if !changes.is_empty() {
            let changes: Vec<String> = changes.iter().map(ToString::to_string).collect();
            return Err(LakeError::TypeChanged {
                table: table.name.clone(),
                location: store.location().to_owned(),
                changes: changes.join("; "),
            });
        }
    }
    Ok(())
}

/// `reflex schemas check`: whether the schemas keep the column types of the lake's files.
pub async fn check_schemas(config: &Config) -> Result<(), LakeError> {
    let store = LakeStore::open(&config.lake)?;
    check_evolution(&store, &Tables::new(&config.schemas)).await
}

/// The SQL that `reflex lake views` prints.
pub async fn views_sql(config: &Config) -> Result<String, LakeError> {
    let store = LakeStore::open(&config.lake)?;
    let tables = Tables::new(&config.schemas);
    let mut listed = Vec::new();
    for table in tables.iter() {
        listed.push(views::ListedTable {
            name: table.name.clone(),
            kind: table.kind.clone(),
            has_files: !store.list(&table.name).await?.is_empty(),
        });
    }
    Ok(views::sql(
        &config.lake,
        &listed,
        |name| match std::env::var(name) {
            Ok(value) => Some(value),
            Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(_)) => {
                tracing::warn!(
                    variable = name,
                    "environment variable is not UTF-8; the views are written without it"
                );
                None
            }
        },
    ))
}
