//! The worker roles, each its own consumer group (`reflex run --role …`), side by side:
//! - [`actions`]: decode, validate, enrich, decide, act and audit every event;
//! - [`lake`]: write every valid event and every audit record as Parquet for DuckDB;
//! - [`analytics`]: run the analyses on event time and publish their findings as events.
//!
//! Every role reads records through [`crate::ingest`], the one admission path.

pub mod actions;
pub mod analytics;
pub mod lake;
