//! `[lake]` and `[roles.lake]`: where the lake role writes and when it rotates files.
//!
//! Every key is documented in `config/reflex.toml`. The store is a local directory (relative to
//! the config file, or `file:///abs/path`) or `s3://bucket/prefix`; S3 credentials come only
//! from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::lake::segment::Limits;

/// `[lake]` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLake {
    /// A directory (relative to the config file), `file:///abs/dir` or `s3://bucket/prefix`.
    pub store: String,
    /// Records of one partition per file set; deterministic, so replays cut at the same place.
    pub max_file_records: usize,
    /// Buffered row bytes of one partition before its files are written.
    pub max_file_bytes: usize,
    /// Longest a record waits in a buffer before its files are written.
    #[serde(with = "humantime_serde")]
    pub max_file_age: Duration,
    /// Bound on all buffered rows; above it, the largest buffer is written early.
    pub max_buffered_bytes: usize,
    /// Segments encoded and uploaded at once, off the consumer loop.
    pub max_segments_writing: usize,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// zstd level of Parquet pages.
    pub zstd_level: i32,
    /// S3 settings for an `s3://` store.
    pub s3: RawLakeS3,
}

impl Default for RawLake {
    fn default() -> Self {
        Self {
            store: "../lake".into(),
            max_file_records: 1_000_000,
            max_file_bytes: 128 * 1024 * 1024,
            max_file_age: Duration::from_secs(300),
            max_buffered_bytes: 512 * 1024 * 1024,
            max_segments_writing: 2,
            row_group_rows: 122_880,
            zstd_level: 3,
            s3: RawLakeS3::default(),
        }
    }
}

/// `[lake.s3]` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLakeS3 {
    /// Endpoint URL of an S3-compatible service; empty for AWS.
    pub endpoint: String,
    /// Region.
    pub region: String,
    /// Path-style requests (`endpoint/bucket/key`), as MinIO and s3s-fs expect.
    pub path_style: bool,
    /// PEM file of a private CA for an HTTPS endpoint, trusted beside the system's CAs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl Default for RawLakeS3 {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            region: "us-east-1".into(),
            path_style: true,
            ca_file: None,
        }
    }
}

/// `[roles.lake]` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLakeRole {
    /// Consumer group id.
    pub group_id: String,
}

impl Default for RawLakeRole {
    fn default() -> Self {
        Self {
            group_id: "reflex-lake".into(),
        }
    }
}

/// Where the lake lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A local directory.
    Local(PathBuf),
    /// A bucket and key prefix (without slashes at either end; may be empty).
    S3 {
        /// Bucket.
        bucket: String,
        /// Key prefix.
        prefix: String,
    },
}

/// Validated lake settings.
#[derive(Debug, Clone)]
pub struct LakeConfig {
    /// The lake role's consumer group.
    pub group_id: String,
    /// Where the lake lives.
    pub location: StoreLocation,
    /// S3 endpoint, empty for AWS.
    pub s3_endpoint: String,
    /// S3 region.
    pub s3_region: String,
    /// S3 path-style requests.
    pub s3_path_style: bool,
    /// Private CA of an HTTPS S3 endpoint.
    pub s3_ca_file: Option<PathBuf>,
    /// Rotation limits per partition.
    pub limits: Limits,
    /// Bound on all buffered rows, those being written included.
    pub max_buffered_bytes: usize,
    /// Segments being encoded and uploaded at once.
    pub max_segments_writing: usize,
    /// Rows per row group.
    pub row_group_rows: usize,
    /// zstd level.
    pub zstd_level: i32,
}

impl LakeConfig {
    /// Validates `[lake]` and `[roles.lake]`; relative directories are resolved against `base`.
    pub fn new(raw: RawLake, role: RawLakeRole, base: &Path) -> Result<Self, ConfigError> {
        let positive = |key: &'static str, value: usize| {
            if value == 0 {
                Err(ConfigError::Invalid {
                    key,
                    value: "0".into(),
                    why: "must be at least 1",
                })
            } else {
                Ok(value)
            }
        };
        if raw.max_file_age.is_zero() {
            return Err(ConfigError::Invalid {
                key: "lake.max_file_age",
                value: "0s".into(),
                why: "must be longer than zero",
            });
        }
        if !(1..=22).contains(&raw.zstd_level) {
            return Err(ConfigError::Invalid {
                key: "lake.zstd_level",
                value: raw.zstd_level.to_string(),
                why: "must be between 1 and 22",
            });
        }
        Ok(Self {
            group_id: role.group_id,
            location: location(&raw.store, base)?,
            s3_endpoint: raw.s3.endpoint,
            s3_region: raw.s3.region,
            s3_path_style: raw.s3.path_style,
            s3_ca_file: match raw.s3.ca_file {
                Some(file) => {
                    let path = base.join(file);
                    std::fs::File::open(&path).map_err(|source| ConfigError::File {
                        key: "lake.s3.ca_file",
                        path: path.clone(),
                        source,
                    })?;
                    Some(path)
                }
                None => None,
            },
            limits: Limits {
                max_records: positive("lake.max_file_records", raw.max_file_records)?,
                max_bytes: positive("lake.max_file_bytes", raw.max_file_bytes)?,
                max_age: raw.max_file_age,
            },
            max_buffered_bytes: positive("lake.max_buffered_bytes", raw.max_buffered_bytes)?,
            max_segments_writing: positive("lake.max_segments_writing", raw.max_segments_writing)?,
            row_group_rows: positive("lake.row_group_rows", raw.row_group_rows)?,
            zstd_level: raw.zstd_level,
        })
    }
}

fn location(store: &str, base: &Path) -> Result<StoreLocation, ConfigError> {
    let bad = |why: &'static str| ConfigError::Invalid {
        key: "lake.store",
        value: format!("\"{store}\""),
        why,
    };
    if let Some(rest) = store.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("an s3:// store needs a bucket: s3://bucket/prefix"));
        }
        return Ok(StoreLocation::S3 {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
        });
    }
    if let Some(path) = store.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(bad("a file:// store needs an absolute path: file:///dir"));
        }
        return Ok(StoreLocation::Local(PathBuf::from(path)));
    }
    if store.contains("://") {
        return Err(bad("use a directory, file:///dir or s3://bucket/prefix"));
    }
    if store.trim().is_empty() {
        return Err(bad("name a directory, file:///dir or s3://bucket/prefix"));
    }
    Ok(StoreLocation::Local(base.join(store)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<LakeConfig, ConfigError> {
        let raw: RawLake = toml::from_str(toml_text).map_err(|e| ConfigError::Parse {
            path: "t.toml".into(),
            message: e.to_string(),
        })?;
        LakeConfig::new(raw, RawLakeRole::default(), Path::new("/etc/reflex"))
    }

    #[test]
    fn defaults_and_locations() {
        let cfg = parse("").expect("defaults");
        assert_eq!(cfg.group_id, "reflex-lake");
        assert_eq!(
            cfg.location,
            StoreLocation::Local(PathBuf::from("/etc/reflex/../lake"))
        );
        assert_eq!(cfg.limits.max_age, Duration::from_secs(300));
        assert_eq!(cfg.max_segments_writing, 2);
        let cfg = parse("max_segments_writing = 5").expect("five");
        assert_eq!(cfg.max_segments_writing, 5);
        let cfg = parse("store = \"s3://lake/raw/\"\nmax_file_age = \"2s\"").expect("s3");
        assert_eq!(
            cfg.location,
            StoreLocation::S3 {
                bucket: "lake".into(),
                prefix: "raw".into()
            }
        );
        assert_eq!(cfg.limits.max_age, Duration::from_secs(2));
        let cfg = parse("store = \"file:///data/lake\"").expect("file url");
        assert_eq!(cfg.location, StoreLocation::Local("/data/lake".into()));
    }

    #[test]
    fn bad_values_are_named() {
        let msg = parse("store = \"gs://x\"").expect_err("scheme").to_string();
        assert!(
            msg.contains("lake.store") && msg.contains("gs://x"),
            "{msg}"
        );
        let msg = parse("store = \"s3://\"").expect_err("bucket").to_string();
        assert!(msg.contains("needs a bucket"), "{msg}");
        let msg = parse("max_file_records = 0").expect_err("zero").to_string();
        assert!(msg.contains("lake.max_file_records"), "{msg}");
        let msg = parse("max_segments_writing = 0")
            .expect_err("zero")
            .to_string();
        assert!(msg.contains("lake.max_segments_writing"), "{msg}");
        let msg = parse("zstd_level = 40").expect_err("level").to_string();
        assert!(msg.contains("lake.zstd_level = 40"), "{msg}");
    }
}
