//! The object store under the lake: a local directory or an S3 bucket, through `object_store`.
//!
//! A file is written whole and only if its key is free (`PutMode::Create`): locally
//! `object_store` writes a temporary file beside it and hard-links it to its name, which fails
//! if the name exists; on S3 it is one PUT with `If-None-Match: *`, which the store refuses
//! (412) if the key exists. A reader never sees half a file, and a written file is never
//! replaced: a writer that finds its key taken reads the file there instead
//! ([`LakeStore::existing`]) and decides what to do with it ([`super::write`]).

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_schema::SchemaRef;
use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, PutMode, PutOptions, PutPayload};
use parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStreamBuilder};
use parquet::arrow::ProjectionMask;

use crate::config::{LakeConfig, StoreLocation};

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be set up.
    #[error("cannot open lake store {location}: {source}")]
    Open {
        /// The store.
        location: String,
        /// The cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Writing, listing or reading failed.
    #[error("lake store {location}: cannot {what} {key}: {source}")]
    Io {
        /// The store.
        location: String,
        /// Put, list or read.
        what: &'static str,
        /// The key or prefix.
        key: String,
        /// The cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What a create-only write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// The file was written.
    Created,
    /// A file was at the key already; it was left as it is.
    Exists,
}

/// A lake file found where a writer meant to create one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingFile {
    /// The topic its footer names, if it names one.
    pub topic: Option<String>,
    /// The partition its footer names, if it names one.
    pub partition: Option<i32>,
    /// The Kafka offsets of its rows, in file order; `None` if it has no `kafka_offset` column
    /// of 64-bit integers (not a file the lake wrote).
    pub offsets: Option<Vec<i64>>,
}

/// The lake's object store and the key prefix of its root.
#[derive(Debug, Clone)]
pub struct LakeStore {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    location: String,
}

impl LakeStore {
    /// Opens the store the configuration names; a local directory is created if missing.
    pub fn open(config: &LakeConfig) -> Result<Self, StoreError> {
        let location = describe(&config.location);
        let open_err = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            location: location.clone(),
            source,
        };
        match &config.location {
            StoreLocation::Local(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| open_err(Box::new(e)))?;
                let store = LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| open_err(Box::new(e)))?
                    .with_automatic_cleanup(false);
                Ok(Self {
                    store: Arc::new(store),
                    prefix: String::new(),
                    location,
                })
            }
            StoreLocation::S3 { bucket, prefix } => {
                let mut builder = AmazonS3Builder::from_env();
                if let Some(ca_file) = &config.s3_ca_file {
                    let pem = std::fs::read(ca_file).map_err(|e| open_err(Box::new(e)))?;
                    let mut options = object_store::ClientOptions::new();
                    for cert in object_store::Certificate::from_pem_bundle(&pem)
                        .map_err(|e| open_err(Box::new(e)))?
                    {
                        options = options.with_root_certificate(cert);
                    }
                    builder = builder.with_client_options(options);
                }
                // A few quick tries heal a dropped connection; a store that stays down is an
                // outage the lake worker reports and retries itself ([`super::outage`]).
                let retry = object_store::RetryConfig {
                    max_retries: 3,
                    retry_timeout: std::time::Duration::from_secs(10),
                    ..object_store::RetryConfig::default()
                };
                let mut builder = builder
                    .with_retry(retry)
                    .with_bucket_name(bucket)
                    .with_region(&config.s3_region)
                    .with_virtual_hosted_style_request(!config.s3_path_style);
                if !config.s3_endpoint.is_empty() {
                    builder = builder
                        .with_endpoint(&config.s3_endpoint)
                        .with_allow_http(config.s3_endpoint.starts_with("http://"));
                }
                let store = builder.build().map_err(|e| open_err(Box::new(e)))?;
                Ok(Self {
                    store: Arc::new(store),
                    prefix: prefix.clone(),
                    location,
                })
            }
        }
    }

    /// The store as written in messages: a directory or `s3://bucket/prefix`.
    pub fn location(&self) -> &str {
        &self.location
    }

    fn path(&self, key: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix))
        }
    }

    fn io_err<E: std::error::Error + Send + Sync + 'static>(
        &self,
        what: &'static str,
        key: &str,
    ) -> impl FnOnce(E) -> StoreError {
        let (location, key) = (self.location.clone(), key.to_owned());
        move |e| StoreError::Io {
            location,
            what,
            key,
            source: Box::new(e),
        }
    }

    /// Writes `bytes` at `key` (relative to the lake root), whole, unless a file is there
    /// already: then nothing is written and the answer is [`Put::Exists`].
    pub async fn put_new(&self, key: &str, bytes: Bytes) -> Result<Put, StoreError> {
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&self.path(key), PutPayload::from_bytes(bytes), options)
            .await
        {
            Ok(_) => Ok(Put::Created),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Put::Exists),
            Err(e) => Err(self.io_err("write", key)(e)),
        }
    }

    /// The Kafka coordinates of the rows of the lake file at `key`: the topic and partition its
    /// footer names and the `kafka_offset` column, in file order.
    pub async fn existing(&self, key: &str) -> Result<ExistingFile, StoreError> {
        let path = self.path(key);
        let meta = self
            .store
            .head(&path)
            .await
            .map_err(self.io_err("read", key))?;
        let reader = ParquetObjectReader::new(self.store.clone(), path).with_file_size(meta.size);
        let builder = ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(self.io_err("read the footer of", key))?;
        let (topic, partition, column) = {
            let footer = |name: &str| {
                builder
                    .metadata()
                    .file_metadata()
                    .key_value_metadata()
                    .and_then(|kv| kv.iter().find(|e| e.key == name))
                    .and_then(|e| e.value.clone())
            };
            let column = builder
                .parquet_schema()
                .columns()
                .iter()
                .position(|c| c.path().parts() == ["kafka_offset"]);
            (
                footer("reflex.topic"),
                footer("reflex.partition").and_then(|p| p.parse().ok()),
                column,
            )
        };
        let Some(column) = column else {
            return Ok(ExistingFile {
                topic,
                partition,
                offsets: None,
            });
        };
        let mask = ProjectionMask::leaves(builder.parquet_schema(), [column]);
        let batches: Vec<arrow_array::RecordBatch> = builder
            .with_projection(mask)
            .build()
            .map_err(self.io_err("read", key))?
            .try_collect()
            .await
            .map_err(self.io_err("read", key))?;
        let mut offsets = Vec::new();
        for batch in &batches {
            let Some(values) = batch
                .column(0)
                .as_primitive_opt::<arrow_array::types::Int64Type>()
            else {
                return Ok(ExistingFile {
                    topic,
                    partition,
                    offsets: None,
                });
            };
            offsets.extend(values.iter().flatten());
        }
        Ok(ExistingFile {
            topic,
            partition,
            offsets: Some(offsets),
        })
    }

    /// The Parquet files under `dir` (relative to the lake root).
    pub async fn list(&self, dir: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let prefix = self.path(dir);
        let files: Vec<ObjectMeta> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(self.io_err("list", dir))?;
        Ok(files
            .into_iter()
            .filter(|m| m.location.extension() == Some("parquet"))
            .collect())
    }

    /// A reader of a file that [`Self::list`] returned, and its key relative to the lake root.
    pub fn reader(&self, file: &ObjectMeta) -> (ParquetObjectReader, String) {
        let key = file.location.as_ref();
        let key = key
            .strip_prefix(self.prefix.as_str())
            .and_then(|k| k.strip_prefix('/'))
            .unwrap_or(key);
        let reader = ParquetObjectReader::new(self.store.clone(), file.location.clone())
            .with_file_size(file.size);
        (reader, key.to_owned())
    }

    /// The Arrow schema of the most recently written file under `dir`, if there is one.
    pub async fn newest_schema(&self, dir: &str) -> Result<Option<SchemaRef>, StoreError> {
        let Some(newest) = self
            .list(dir)
            .await?
            .into_iter()
            .max_by(|a, b| (a.last_modified, &a.location).cmp(&(b.last_modified, &b.location)))
        else {
            return Ok(None);
        };
        let key = newest.location.to_string();
        let reader = ParquetObjectReader::new(self.store.clone(), newest.location)
            .with_file_size(newest.size);
        let builder = ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(self.io_err("read the footer of", &key))?;
        Ok(Some(builder.schema().clone()))
    }
}

/// A store location as users write it.
pub fn describe(location: &StoreLocation) -> String {
    match location {
        StoreLocation::Local(dir) => dir.display().to_string(),
        StoreLocation::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}"),
        StoreLocation::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
    }
}
