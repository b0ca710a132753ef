//! # p11trace-record
//!
//! What the shim and the recorder agree on, and nothing more: a call as the shim saw it, and how it
//! travels. Owns
//!
//! - [`functions`]: the one declaration of all 104 PKCS#11 functions (2.40, 3.0, 3.2), with the
//!   role of every argument; the shim generates its wrappers from it, the spy importer its parser.
//! - [`wire`]: the shim → recorder protocol (bincode 1.3 over ipc-channel) and [`wire::CallRecord`].
//! - [`attr`]: attributes and info fields of a record, and their captured values.
//! - [`policy`]: the allowlist of attribute values that may be recorded, and their rendering.
//! - [`params`]: mechanism parameters as recorded.
//! - [`names`]: `CKR_*`, `CKM_*`, `CKA_*`, `CKU_*`, ... names, both ways.
//! - [`socket`]: the default socket path and the folder-trust rule both ends apply.
//! - [`config_file`]: the shim's configuration file, its trust rule and its `key = value` lines
//!   (read by the shim, and by `p11trace-recorder doctor` to say what the shim would do).
//!
//! Must not depend on arrow, parquet or polars, not even optionally: the shim links this crate
//! into every traced process (`tests/tests/layering.rs` proves it from `cargo metadata`). The
//! on-disk form of the same records belongs to `p11trace-dataset`.

pub mod attr;
pub mod config_file;
pub mod functions;
pub mod names;
pub mod params;
pub mod policy;
pub mod socket;
pub mod wire;

pub use functions::Func;
