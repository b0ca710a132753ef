//! Opening a store from a dataset URL and the environment.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, ObjectStoreScheme, RetryConfig};

use crate::{Remote, StoreError};

/// One request, its body included, may take this long before it counts as failed (a stalled
/// server); the caller retries. An 8 MiB part in 60 s needs ~1.2 Mbit/s; slower links set
/// `AWS_TIMEOUT=300s` (`GOOGLE_TIMEOUT`, `AZURE_TIMEOUT`: object_store's client keys).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// object_store's own retries of one request (5xx, throttling, connection resets): a few, quickly;
/// the recorder's uploader retries a whole file with its own longer backoff.
fn retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 3,
        retry_timeout: Duration::from_secs(30),
    }
}

fn client() -> ClientOptions {
    ClientOptions::new()
        .with_timeout(REQUEST_TIMEOUT)
        .with_connect_timeout(CONNECT_TIMEOUT)
}

/// `(key, value)` of the environment variables whose names start with `prefix`, lower-cased
/// as object_store's builders parse them.
fn env_with(prefix: &str) -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(key, _)| key.starts_with(prefix))
        .map(|(key, value)| (key.to_ascii_lowercase(), value))
        .collect()
}

impl Remote {
    /// Opens the dataset at `url` (`s3://BUCKET/PREFIX`, `gs://…`, `az://…`, `file:///PATH`).
    pub fn open(url: &str) -> Result<Remote, StoreError> {
        let bad = |why: String| StoreError::Url {
            url: url.to_owned(),
            why,
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(format!("not a URL: {e}")))?;
        let (scheme, path) = ObjectStoreScheme::parse(&parsed).map_err(|e| bad(e.to_string()))?;
        let prefix = ObjectPath::parse(path).map_err(|e| bad(format!("bad path: {e}")))?;
        let backend = |e: object_store::Error| StoreError::Backend {
            what: format!("cannot open {url}"),
            why: crate::brief(&e),
        };
        // Our client settings first, then what the environment says (it may override them),
        // then the URL: what each builder's `from_env` does, with our defaults under it.
        macro_rules! configured {
            ($builder:ty, $prefix:literal) => {{
                let builder = env_with($prefix).into_iter().fold(
                    <$builder>::new()
                        .with_client_options(client())
                        .with_retry(retry()),
                    |builder, (key, value)| match key.parse() {
                        Ok(key) => builder.with_config(key, value),
                        Err(_) => builder,
                    },
                );
                Arc::new(builder.with_url(url).build().map_err(backend)?)
            }};
        }
        let (store, md5_etags): (Arc<dyn ObjectStore>, bool) = match scheme {
            ObjectStoreScheme::AmazonS3 => (configured!(AmazonS3Builder, "AWS_"), true),
            ObjectStoreScheme::GoogleCloudStorage => {
                (configured!(GoogleCloudStorageBuilder, "GOOGLE_"), false)
            }
            ObjectStoreScheme::MicrosoftAzure => {
                (configured!(MicrosoftAzureBuilder, "AZURE_"), false)
            }
            ObjectStoreScheme::Local => (Arc::new(LocalFileSystem::new()), false),
            other => {
                return Err(bad(format!(
                    "{other:?} is not a dataset store; use s3://, gs://, az:// or file://"
                )));
            }
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| bad(format!("cannot start the I/O runtime: {e}")))?;
        Ok(Remote {
            url: url.to_owned(),
            store,
            prefix,
            md5_etags,
            runtime,
        })
    }
}
