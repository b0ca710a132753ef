//! The digest document: one per sealed period (or backfill), `ARCHIVE/digests/<name>.json`.
//! Documented in `schemas/archive.md`. Its rules:
//!
//! - `prev_digest_sha256` is the SHA-256 of the previous digest file's bytes (by `sequence`);
//!   `null` for the first. The head hash is the SHA-256 of the newest digest file.
//! - `merkle_root` is the RFC 6962 root over `files[].sha256` in the listed order.
//! - `signature` is Ed25519 over the compact JSON of the digest with `signature` set to `null`
//!   (the keys in the order written, as [`Digest::signed_bytes`] makes them).

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::merkle;

/// `format` of every digest.
pub const FORMAT: &str = "p11trace-archive-digest";
/// `digest_version` written by this build.
pub const DIGEST_VERSION: u32 = 1;

/// One archived file as its digest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative to the archive folder, `/`-separated: `calls/date=…/part-….parquet`.
    pub path: String,
    /// `calls` or `clients`.
    pub table: String,
    pub sha256: String,
    pub bytes: u64,
    pub rows: u64,
    /// Earliest and latest `start` (`connected_at` for `clients`), RFC 3339; `null` if none.
    pub min_start: Option<String>,
    pub max_start: Option<String>,
    pub schema_version: u32,
}

/// The signature of a digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// Always `ed25519`.
    pub algorithm: String,
    /// The signer's public key, 32 bytes as hex (also covered by the signature).
    pub public_key: String,
    /// 64 bytes as hex.
    pub value: String,
}

/// A period's digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Digest {
    pub format: String,
    pub digest_version: u32,
    /// Position in the chain, from 0.
    pub sequence: u64,
    /// `day` or `hour`.
    pub period_kind: String,
    /// `2026-12-01`, `2026-12-01T13` or `unknown`.
    pub period: String,
    /// `true` for late data of a period an earlier digest already sealed.
    pub backfill: bool,
    /// The time range covered, `[start, end)`, RFC 3339; `null` for `unknown`.
    pub start: Option<String>,
    pub end: Option<String>,
    pub files: Vec<FileEntry>,
    /// Rows over all files.
    pub rows: u64,
    pub merkle_root: String,
    pub prev_digest_sha256: Option<String>,
    /// The public key the signature must verify with; `null` when unsigned.
    pub signer: Option<String>,
    pub signature: Option<Signature>,
}

/// SHA-256 of bytes, as hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    crate::hex(&Sha256::digest(bytes))
}

impl Digest {
    /// The digest file's name in `digests/`: the period, and `+N` for its N-th backfill.
    pub fn file_name(period: &str, backfill_number: u64) -> String {
        if backfill_number == 0 {
            format!("{period}.json")
        } else {
            format!("{period}+{backfill_number}.json")
        }
    }

    /// The Merkle root over the listed files' hashes; `None` if a hash is not 32 bytes of hex.
    pub fn compute_merkle_root(files: &[FileEntry]) -> Option<String> {
        let leaves = files
            .iter()
            .map(|f| crate::unhex(&f.sha256)?.try_into().ok())
            .collect::<Option<Vec<merkle::Hash>>>()?;
        Some(crate::hex(&merkle::root(&leaves)))
    }

    /// What the signature covers: compact JSON with `signature: null`.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut body = self.clone();
        body.signature = None;
        serde_json::to_vec(&body).expect("a digest always serialises")
    }

    /// The file's bytes: pretty JSON and a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a digest always serialises");
        bytes.push(b'\n');
        bytes
    }

    /// Parses a digest file's bytes; names `what` in the error.
    pub fn parse(bytes: &[u8], what: &str) -> Result<Digest> {
        let digest: Digest = serde_json::from_slice(bytes)
            .with_context(|| format!("{what}: not a p11trace archive digest"))?;
        if digest.format != FORMAT {
            bail!("{what}: format is {:?}, expected {FORMAT:?}", digest.format);
        }
        if digest.digest_version != DIGEST_VERSION {
            bail!(
                "{what}: digest_version {} (this build reads {DIGEST_VERSION})",
                digest.digest_version
            );
        }
        Ok(digest)
    }

    /// Reads and parses a digest file; returns it and the SHA-256 of its bytes.
    pub fn read(path: &Path) -> Result<(Digest, String)> {
        let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let digest = Digest::parse(&bytes, &path.display().to_string())?;
        Ok((digest, sha256_hex(&bytes)))
    }
}
