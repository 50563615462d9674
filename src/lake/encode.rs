//! Rows to a Parquet file in memory: the Arrow writer encodes a file's record batch (built by
//! [`crate::lake::rows`], or decoded from JSON rows by arrow-json) with zstd. The table's id
//! column gets a bloom filter per row group, so that finding one event (`reflex trace`) reads
//! a few hundred bytes of a file that does not hold it instead of its rows.

use arrow_array::RecordBatch;
use arrow_schema::{ArrowError, SchemaRef};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

// The JSON decoder's batches are the builders' batches.
use super::rows::BATCH_ROWS;

/// False-positive rate of the id column's bloom filters: about 1.2 bytes per row.
pub const BLOOM_FPP: f64 = 0.01;

/// Why rows could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// A row does not fit the table's schema.
    #[error("rows of table \"{table}\" do not fit its schema: {source}")]
    Decode {
        /// The table.
        table: String,
        /// arrow-json's error.
        source: ArrowError,
    },
    /// A row's value does not fit its column.
    #[error("rows of table \"{table}\" do not fit its schema: {message}")]
    Row {
        /// The table.
        table: String,
        /// The column and the value.
        message: String,
    },
    /// The Parquet writer failed.
    #[error("cannot encode Parquet for table \"{table}\": {source}")]
    Parquet {
        /// The table.
        table: String,
        /// The writer's error.
        source: ParquetError,
    },
}

/// How files are encoded.
#[derive(Debug, Clone, Copy)]
pub struct EncodeSettings {
    /// Rows per row group.
    pub row_group_rows: usize,
    /// zstd level.
    pub zstd_level: i32,
}

/// Encodes record batches (the rows of [`crate::lake::rows::Rows`]) as one Parquet file, with
/// a bloom filter on `id_column` (see [`crate::lake::table::Table::id_column`]); `metadata`
/// goes into its footer.
pub fn encode_batches(
    table: &str,
    id_column: &str,
    batches: &[RecordBatch],
    settings: EncodeSettings,
    metadata: Vec<(String, String)>,
) -> Result<Bytes, EncodeError> {
    let parquet_err = |source| EncodeError::Parquet {
        table: table.to_owned(),
        source,
    };
    let Some(first) = batches.first() else {
        return Err(EncodeError::Row {
            table: table.to_owned(),
            message: "no rows to encode".to_owned(),
        });
    };
    let rows = batches.iter().map(RecordBatch::num_rows).sum();
    let properties = properties(id_column, rows, settings, metadata).map_err(parquet_err)?;
    let memory: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum();
    let mut writer = ArrowWriter::try_new(
        Vec::with_capacity(memory / 4),
        first.schema(),
        Some(properties),
    )
    .map_err(parquet_err)?;
    for batch in batches {
        writer.write(batch).map_err(parquet_err)?;
    }
    let bytes = writer.into_inner().map_err(parquet_err)?;
    Ok(Bytes::from(bytes))
}

/// Encodes newline-separated JSON rows ([`crate::lake::table::Table::event_row`]) as one
/// Parquet file, decoding them with arrow-json against `schema`; otherwise as [`encode_batches`].
pub fn encode(
    table: &str,
    schema: &SchemaRef,
    id_column: &str,
    json: &[u8],
    settings: EncodeSettings,
    metadata: Vec<(String, String)>,
) -> Result<Bytes, EncodeError> {
    let parquet_err = |source| EncodeError::Parquet {
        table: table.to_owned(),
        source,
    };
    let rows = json.iter().filter(|b| **b == b'\n').count();
    let properties = properties(id_column, rows, settings, metadata).map_err(parquet_err)?;
    let mut writer = ArrowWriter::try_new(
        Vec::with_capacity(json.len() / 4),
        schema.clone(),
        Some(properties),
    )
    .map_err(parquet_err)?;
    for batch in decode_json(table, schema, json)? {
        writer.write(&batch).map_err(parquet_err)?;
    }
    let bytes = writer.into_inner().map_err(parquet_err)?;
    Ok(Bytes::from(bytes))
}

/// Newline-separated JSON rows as record batches of `schema`, by arrow-json's decoder.
pub fn decode_json(
    table: &str,
    schema: &SchemaRef,
    json: &[u8],
) -> Result<Vec<RecordBatch>, EncodeError> {
    let decode_err = |source| EncodeError::Decode {
        table: table.to_owned(),
        source,
    };
    let mut decoder = arrow_json::ReaderBuilder::new(schema.clone())
        .with_batch_size(BATCH_ROWS)
        .build_decoder()
        .map_err(decode_err)?;
    let mut batches = Vec::new();
    let mut rest = json;
    while !rest.is_empty() {
        let read = decoder.decode(rest).map_err(decode_err)?;
        rest = &rest[read..];
        if let Some(batch) = decoder.flush().map_err(decode_err)? {
            batches.push(batch);
        }
    }
    if let Some(batch) = decoder.flush().map_err(decode_err)? {
        batches.push(batch);
    }
    Ok(batches)
}

/// The writer's settings: zstd, row groups, the id column's bloom filter sized for the rows of
/// one row group (the filter is per row group; ids are distinct) and no dictionary for it, the
/// footer's metadata.
fn properties(
    id_column: &str,
    rows: usize,
    settings: EncodeSettings,
    metadata: Vec<(String, String)>,
) -> Result<WriterProperties, ParquetError> {
    let level = ZstdLevel::try_new(settings.zstd_level)?;
    let distinct = rows.max(1).min(settings.row_group_rows.max(1)) as u64;
    let id_path = ColumnPath::from(id_column);
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_size(settings.row_group_rows)
        .set_column_bloom_filter_enabled(id_path.clone(), true)
        .set_column_bloom_filter_fpp(id_path.clone(), BLOOM_FPP)
        .set_column_bloom_filter_ndv(id_path.clone(), distinct)
        // Ids are distinct: a dictionary would hold every one of them (each hashed and copied
        // into it, with an index per row) until it outgrew its page and the writer fell back to
        // plain values anyway.
        .set_column_dictionary_enabled(id_path, false)
        .set_key_value_metadata(Some(
            metadata
                .into_iter()
                .map(|(k, v)| KeyValue::new(k, v))
                .collect(),
        ))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::table::{Coordinates, Table};
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use serde_json::json;

    #[test]
    fn typed_rows_round_trip_through_parquet() {
        let table = Table::events(
            "order.placed",
            &json!({"type": "object", "properties": {
                "amount": {"type": "number"},
                "placed_at": {"type": "string", "format": "date-time"},
                "items": {"type": "array", "items": {"type": "object", "properties": {
                    "sku": {"type": "string"}, "quantity": {"type": "integer"}}}}}}),
        );
        let event: crate::event::CloudEvent = serde_json::from_value(json!({
            "specversion": "1.0", "id": "e-1", "source": "/s", "type": "order.placed",
            "time": "2026-01-02T03:04:05.5+01:00",
            "data": {"amount": 12, "placed_at": "2026-01-02T02:00:00Z",
                     "items": [{"sku": "a", "quantity": 3}], "coupon": "X"}}))
        .expect("event");
        let mut json = Vec::new();
        let at = Coordinates {
            topic: "t",
            partition: 1,
            offset: 42,
            timestamp_ms: Some(1_700_000_000_000),
        };
        let hour = table.event_row(&event, at, chrono::Utc::now(), &mut json);
        assert_eq!(hour.path(), "date=2026-01-02/hour=02");
        let settings = EncodeSettings {
            row_group_rows: 100,
            zstd_level: 3,
        };
        let bytes = encode(
            &table.name,
            &table.schema,
            table.id_column(),
            &json,
            settings,
            vec![],
        )
        .expect("encodes");
        let mut reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .expect("parquet")
            .build()
            .expect("reader");
        let batch = reader.next().expect("one batch").expect("decodes");
        assert_eq!(batch.num_rows(), 1);
        let col = |name: &str| batch.column_by_name(name).expect(name).clone();
        assert_eq!(col("amount").as_primitive::<Float64Type>().value(0), 12.0);
        assert_eq!(col("kafka_offset").as_primitive::<Int64Type>().value(0), 42);
        assert_eq!(
            col("time")
                .as_primitive::<TimestampMicrosecondType>()
                .value(0),
            1_767_319_445_500_000
        );
        assert_eq!(
            col("data_extra").as_string::<i32>().value(0),
            r#"{"coupon":"X"}"#
        );
        let items = col("items");
        let items = items.as_list::<i32>().value(0);
        let quantity = items
            .as_struct()
            .column_by_name("quantity")
            .expect("quantity")
            .clone();
        assert_eq!(quantity.as_primitive::<Int64Type>().value(0), 3);
    }

    #[test]
    fn the_id_column_alone_has_a_bloom_filter_that_knows_its_ids_and_no_dictionary() {
        use parquet::file::properties::ReaderProperties;
        use parquet::file::reader::{FileReader, SerializedFileReader};
        use parquet::file::serialized_reader::ReadOptionsBuilder;
        let table = Table::events(
            "order.placed",
            &json!({"type": "object", "properties": {"amount": {"type": "number"}}}),
        );
        let mut json = Vec::new();
        for n in 0..50 {
            let event: crate::event::CloudEvent = serde_json::from_value(json!({
                "specversion": "1.0", "id": format!("e-{n}"), "source": "/s",
                "type": "order.placed", "data": {"amount": n}}))
            .expect("event");
            let at = Coordinates {
                topic: "t",
                partition: 0,
                offset: n,
                timestamp_ms: None,
            };
            table.event_row(&event, at, chrono::Utc::now(), &mut json);
        }
        let settings = EncodeSettings {
            row_group_rows: 20,
            zstd_level: 1,
        };
        let bytes = encode(
            &table.name,
            &table.schema,
            table.id_column(),
            &json,
            settings,
            vec![],
        )
        .expect("encodes");
        let options = ReadOptionsBuilder::new()
            .with_reader_properties(
                ReaderProperties::builder()
                    .set_read_bloom_filter(true)
                    .build(),
            )
            .build();
        let reader = SerializedFileReader::new_with_options(bytes, options).expect("parquet");
        assert_eq!(reader.num_row_groups(), 3);
        let id = table.schema.index_of("id").expect("an id column");
        for group in 0..3 {
            let row_group = reader.get_row_group(group).expect("row group");
            for column in 0..row_group.num_columns() {
                let bloom = row_group.get_column_bloom_filter(column);
                assert_eq!(bloom.is_some(), column == id, "column {column}");
            }
            // Plain values, no dictionary, for the distinct ids; a dictionary for the others.
            let dictionary = |column: usize| {
                row_group
                    .metadata()
                    .column(column)
                    .dictionary_page_offset()
                    .is_some()
            };
            let source = table.schema.index_of("source").expect("a source column");
            assert!(!dictionary(id), "the id column has no dictionary");
            assert!(dictionary(source), "the source column has one");
            let bloom = row_group.get_column_bloom_filter(id).expect("bloom filter");
            let first = group * 20;
            assert!(bloom.check(&format!("e-{first}").as_str()));
            assert!(!bloom.check(&"not-an-id"), "a likely negative");
        }
    }

    #[test]
    fn audit_rows_encode() {
        let table = Table::audit();
        let record = json!({"event_id": "e-1", "type": "order.placed", "topic": "t", "partition": 0,
            "offset": 1, "outcome": "denied", "decision": {"allow": false, "reasons": ["limit"],
            "obligations": {"redact": ["data.customer_id"]}}, "policy_revision": "r",
            "worker": "w", "processed_at": "2026-01-02T03:04:05Z",
            "timings_us": {"decode": 1, "validate": 2, "policy": 3, "action": 0}});
        let mut json = Vec::new();
        let at = Coordinates {
            topic: "a",
            partition: 0,
            offset: 9,
            timestamp_ms: None,
        };
        let hour = table
            .audit_row(
                record.to_string().as_bytes(),
                at,
                chrono::Utc::now(),
                &mut json,
            )
            .expect("an object");
        assert_eq!(hour.path(), "date=2026-01-02/hour=03");
        let settings = EncodeSettings {
            row_group_rows: 100,
            zstd_level: 3,
        };
        let bytes = encode(
            "audit",
            &table.schema,
            table.id_column(),
            &json,
            settings,
            vec![],
        )
        .expect("encodes");
        let batch = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .expect("parquet")
            .build()
            .expect("reader")
            .next()
            .expect("batch")
            .expect("decodes");
        let decision = batch.column_by_name("decision").expect("decision").clone();
        let obligations = decision
            .as_struct()
            .column_by_name("obligations")
            .expect("obligations")
            .clone();
        assert_eq!(
            obligations.as_string::<i32>().value(0),
            r#"{"redact":["data.customer_id"]}"#
        );
    }
}
