//! # p11trace-schema
//!
//! Owns schema **v1** of p11trace datasets and everything the shim, the recorder and the query
//! tool must agree on:
//!
//! - [`functions`]: the one declaration of all 104 PKCS#11 functions (2.40, 3.0, 3.2), with the
//!   role of every argument; the shim generates its wrappers from it.
//! - [`wire`]: the shim → recorder protocol (bincode 1.3 over ipc-channel).
//! - [`names`]: `CKR_*`, `CKM_*`, `CKA_*`, `CKU_*`, ... names, both ways.
//! - [`attrs`]: the allowlist of attribute values that may be recorded, and their rendering.
//! - [`row`]: a row of the `calls` and `clients` tables as producers hand it over.
//! - `arrow` (feature `arrow`): the Arrow schemas, batch builders and the Parquet writer.
//!
//! Must not depend on arrow, parquet or polars without the `arrow` feature: the shim links this
//! crate into every traced process.

pub mod attrs;
pub mod functions;
pub mod names;
pub mod params;
pub mod row;
pub mod time;
pub mod wire;

#[cfg(feature = "arrow")]
pub mod arrow;

pub use functions::Func;

/// Version of the dataset schema (`p11trace.schema_version` in every Parquet file).
pub const SCHEMA_VERSION: u32 = 1;
