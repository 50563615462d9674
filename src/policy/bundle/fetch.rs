//! Where a bundle comes from: `file://` (a path), `http(s)://` (conditional GETs with the last
//! `ETag`, so an unchanged bundle costs a `304`), or `s3://bucket/key` (the same with the
//! object's ETag; endpoint, region and path style from `[lake.s3]`, credentials from the
//! `AWS_*` environment).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore as _;
use sha2::{Digest, Sha256};

use super::sign::VerificationKey;
use super::BundleError;

/// How to reach and check a bundle: `[policy.bundle]`, resolved.
#[derive(Debug, Clone)]
pub struct BundleSpec {
    /// The URL.
    pub url: String,
    /// The key that must have signed it (`None`: signatures are not checked).
    pub key: Option<VerificationKey>,
    /// TLS settings for an `https://` URL.
    pub tls: crate::http::HttpTls,
    /// HTTP timeout for one fetch.
    pub timeout: Duration,
    /// S3 endpoint (empty: AWS).
    pub s3_endpoint: String,
    /// S3 region.
    pub s3_region: String,
    /// Path-style S3 requests.
    pub s3_path_style: bool,
}

/// What one fetch found.
#[derive(Debug)]
pub enum Fetched {
    /// The same bundle as the last fetch.
    NotModified,
    /// A bundle (new, or the first).
    Bundle(Vec<u8>),
}

enum Kind {
    File(PathBuf),
    Http(reqwest::Client),
    S3(Arc<dyn object_store::ObjectStore>, object_store::path::Path),
}

/// Fetches one bundle URL again and again, remembering what it saw last.
pub struct Fetcher {
    url: String,
    kind: Kind,
    etag: Option<String>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").field("url", &self.url).finish()
    }
}

impl Fetcher {
    /// A fetcher for `spec.url`; the clients it needs are built here (inside the runtime that
    /// will use them).
    pub fn new(spec: &BundleSpec) -> Result<Self, BundleError> {
        let url = spec.url.trim();
        let bad = || BundleError::Url(url.to_owned());
        let kind = if let Some(path) = url.strip_prefix("file://") {
            if path.is_empty() {
                return Err(bad());
            }
            Kind::File(PathBuf::from(path))
        } else if url.starts_with("http://") || url.starts_with("https://") {
            let client = crate::http::client_builder(&spec.tls)
                .map_err(|e| BundleError::Fetch {
                    url: url.to_owned(),
                    why: e.to_string(),
                })?
                .timeout(spec.timeout)
                .build()
                .map_err(|e| BundleError::Fetch {
                    url: url.to_owned(),
                    why: e.to_string(),
                })?;
            Kind::Http(client)
        } else if let Some(rest) = url.strip_prefix("s3://") {
            let Some((bucket, key)) = rest
                .split_once('/')
                .filter(|(b, k)| !b.is_empty() && !k.is_empty())
            else {
                return Err(bad());
            };
            let mut builder = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_region(&spec.s3_region)
                .with_virtual_hosted_style_request(!spec.s3_path_style);
            if !spec.s3_endpoint.is_empty() {
                builder = builder
                    .with_endpoint(&spec.s3_endpoint)
                    .with_allow_http(spec.s3_endpoint.starts_with("http://"));
            }
            let store = builder.build().map_err(|e| BundleError::Fetch {
                url: url.to_owned(),
                why: e.to_string(),
            })?;
            Kind::S3(Arc::new(store), object_store::path::Path::from(key))
        } else {
            return Err(bad());
        };
        Ok(Self {
            url: url.to_owned(),
            kind,
            etag: None,
        })
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Fetches the bundle unless it is unchanged since the last fetch.
    pub async fn fetch(&mut self) -> Result<Fetched, BundleError> {
        let fail = |why: String| BundleError::Fetch {
            url: self.url.clone(),
            why,
        };
        let (bytes, etag) = match &self.kind {
            Kind::File(path) => {
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                let digest = hex::encode(Sha256::digest(&bytes));
                (bytes, Some(digest))
            }
            Kind::Http(client) => {
                let mut request = client.get(&self.url);
                if let Some(etag) = &self.etag {
                    request = request.header(reqwest::header::IF_NONE_MATCH, etag);
                }
                let response = request
                    .send()
                    .await
                    .map_err(|e| fail(crate::http::error_chain(&e)))?;
                if response.status() == reqwest::StatusCode::NOT_MODIFIED {
                    return Ok(Fetched::NotModified);
                }
                if !response.status().is_success() {
                    return Err(fail(format!("HTTP {}", response.status())));
                }
                let etag = response
                    .headers()
                    .get(reqwest::header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let bytes = response
                    .bytes()
                    .await
                    .map_err(|e| fail(crate::http::error_chain(&e)))?;
                (bytes.to_vec(), etag)
            }
            Kind::S3(store, path) => {
                let options = object_store::GetOptions {
                    if_none_match: self.etag.clone(),
                    ..object_store::GetOptions::default()
                };
                let result = match store.get_opts(path, options).await {
                    Err(object_store::Error::NotModified { .. }) => {
                        return Ok(Fetched::NotModified)
                    }
                    other => other.map_err(|e| fail(e.to_string()))?,
                };
                let etag = result.meta.e_tag.clone();
                let bytes = result.bytes().await.map_err(|e| fail(e.to_string()))?;
                (bytes.to_vec(), etag)
            }
        };
        if etag.is_some() && etag == self.etag {
            return Ok(Fetched::NotModified);
        }
        self.etag = etag;
        Ok(Fetched::Bundle(bytes))
    }
}

/// Fetches the bundle once, on a thread of its own (usable with or without a running Tokio
/// runtime): for start-up, before the workers run.
pub fn fetch_once(spec: &BundleSpec) -> Result<Vec<u8>, BundleError> {
    let spec = spec.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| BundleError::Fetch {
                url: spec.url.clone(),
                why: e.to_string(),
            })?;
        runtime.block_on(async {
            match Fetcher::new(&spec)?.fetch().await? {
                Fetched::Bundle(bytes) => Ok(bytes),
                Fetched::NotModified => Err(BundleError::Fetch {
                    url: spec.url.clone(),
                    why: "no content".into(),
                }),
            }
        })
    })
    .join()
    .unwrap_or_else(|_| {
        Err(BundleError::Fetch {
            url: "(bundle)".into(),
            why: "the fetch thread panicked".into(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn spec(url: String) -> BundleSpec {
        BundleSpec {
            url,
            key: None,
            tls: crate::http::HttpTls::default(),
            timeout: Duration::from_secs(5),
            s3_endpoint: String::new(),
            s3_region: "us-east-1".into(),
            s3_path_style: true,
        }
    }

    /// An HTTP server with ETag "v1" that answers 304 to a matching If-None-Match.
    async fn server(full: Arc<AtomicUsize>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = vec![0; 4096];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                let response = if request.contains("if-none-match: \"v1\"") {
                    "HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned()
                } else {
                    full.fetch_add(1, Ordering::SeqCst);
                    "HTTP/1.1 200 OK\r\netag: \"v1\"\r\ncontent-length: 6\r\nconnection: close\r\n\r\nbundle".to_owned()
                };
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        format!("http://{addr}/bundle.tar.gz")
    }

    #[tokio::test]
    async fn http_fetches_are_conditional_on_the_last_etag() {
        let full = Arc::new(AtomicUsize::new(0));
        let url = server(full.clone()).await;
        let mut fetcher = Fetcher::new(&spec(url)).expect("fetcher");
        let Fetched::Bundle(bytes) = fetcher.fetch().await.expect("first fetch") else {
            panic!("the first fetch returns the bundle");
        };
        assert_eq!(bytes, b"bundle");
        for _ in 0..3 {
            assert!(matches!(
                fetcher.fetch().await.expect("fetch"),
                Fetched::NotModified
            ));
        }
        assert_eq!(
            full.load(Ordering::SeqCst),
            1,
            "one full download, then 304s"
        );
    }

    #[tokio::test]
    async fn files_are_fetched_again_only_when_their_content_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("b.tar.gz");
        std::fs::write(&path, "one").expect("write");
        let mut fetcher =
            Fetcher::new(&spec(format!("file://{}", path.display()))).expect("fetcher");
        assert!(matches!(fetcher.fetch().await, Ok(Fetched::Bundle(_))));
        assert!(matches!(fetcher.fetch().await, Ok(Fetched::NotModified)));
        std::fs::write(&path, "two").expect("write");
        assert!(matches!(fetcher.fetch().await, Ok(Fetched::Bundle(b)) if b == b"two"));
        let err = Fetcher::new(&spec("ftp://x/b".into())).expect_err("scheme");
        assert!(err.to_string().contains("ftp://x/b"), "{err}");
        std::fs::remove_file(&path).expect("rm");
        let err = fetcher.fetch().await.expect_err("gone");
        assert!(err.to_string().contains("b.tar.gz"), "{err}");
    }
}
