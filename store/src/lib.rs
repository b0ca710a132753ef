//! # p11trace-store
//!
//! Object storage for datasets: where a fleet's recorders put their finished Parquet files and
//! where `p11trace-query` reads them back. One URL names a dataset — `s3://BUCKET/PREFIX`,
//! `gs://…`, `az://…` or `file:///PATH` — and the files keep their dataset-relative names
//! (`calls/date=YYYY-MM-DD/part-….parquet`), so DuckDB, Spark, pyarrow or polars read the prefix
//! as they read a local dataset.
//!
//! - [`Remote::upload`] stores one local file under its relative name and proves it arrived:
//!   the stored size, and the stored ETag against the MD5 (single part) or multipart-MD5 form
//!   computed from our bytes; where a store's ETags are not content hashes (local files, GCS,
//!   Azure, S3 with SSE-KMS) it reads the object back and compares SHA-256.
//! - [`Remote::list`] and [`Remote::fetch`] read a dataset's files back, checking sizes.
//!
//! Credentials and endpoints come from the environment the way `object_store`'s builders read
//! it (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
//! `AWS_ALLOW_HTTP`, `GOOGLE_*`, `AZURE_*`).
//!
//! Blocking API over a private single-threaded tokio runtime: the recorder's actors are
//! threads. Owns no dataset layout (that is `p11trace-dataset`'s) and no Arrow or Parquet; must
//! not be linked into the shim.

mod open;
mod transfer;

use std::path::PathBuf;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use thiserror::Error;

pub use transfer::{Entry, Uploaded};

/// What went wrong talking to a store (each names the URL or key and the file).
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{url}: {why}")]
    Url { url: String, why: String },
    /// The store's answer, made short: its error chain repeats each message, and S3 errors
    /// end in an XML body whose `Code` and `Message` are what a person needs.
    #[error("{what}: {why}")]
    Backend { what: String, why: String },
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key}: uploaded but not verified: {why}")]
    Verify { key: String, why: String },
    #[error("{what}: given up before the store answered")]
    GaveUp { what: String },
}

/// One line of `error`: the message, with an S3 XML error body replaced by its code and message.
pub(crate) fn brief(error: &object_store::Error) -> String {
    let text = error.to_string();
    let between = |open: &str, close: &str| {
        let start = text.find(open)? + open.len();
        let end = text[start..].find(close)? + start;
        Some(text[start..end].to_owned())
    };
    match (text.find("<?xml"), between("<Code>", "</Code>")) {
        (Some(xml), Some(code)) => {
            let message = between("<Message>", "</Message>").unwrap_or_default();
            format!("{}{code}: {message}", &text[..xml])
        }
        _ => text,
    }
}

/// Is `text` an object-store URL (`scheme://…`) rather than a local path?
pub fn is_url(text: &str) -> bool {
    text.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric())
    })
}

/// A dataset in object storage: the store, the prefix, and the runtime that drives it.
pub struct Remote {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// Whether the store's ETag of a plain upload is the MD5 of its bytes (S3 and compatibles).
    md5_etags: bool,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish()
    }
}

impl Remote {
    /// The dataset's URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The object key of a dataset-relative name (`calls/date=…/part-….parquet`).
    pub fn key(&self, relative: &str) -> ObjectPath {
        let mut parts: Vec<_> = self.prefix.parts().collect();
        parts.extend(
            relative
                .split('/')
                .filter(|s| !s.is_empty())
                .map(Into::into),
        );
        ObjectPath::from_iter(parts)
    }

    /// `URL/relative`, for messages.
    pub fn describe(&self, relative: &str) -> String {
        format!("{}/{relative}", self.url.trim_end_matches('/'))
    }
}
