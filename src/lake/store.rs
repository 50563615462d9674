//! The object store under the lake: a local directory or an S3 bucket, through `object_store`.
//!
//! A file is written whole: locally `object_store` writes a temporary file and renames it, on
//! S3 it is one PUT, so a reader never sees half a file. Writes overwrite (`PutMode::Overwrite`):
//! a replay after a crash rewrites the same keys, and overwriting is what makes it idempotent
//! (`PutMode::Create` would fail on the key the crashed attempt left behind).

use std::sync::Arc;

use arrow_schema::SchemaRef;
use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, PutPayload};
use parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStreamBuilder};

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
                let mut builder = builder
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

    /// Writes `bytes` at `key` (relative to the lake root), whole, replacing what is there.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.store
            .put(&self.path(key), PutPayload::from_bytes(bytes))
            .await
            .map_err(self.io_err("write", key))?;
        Ok(())
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
