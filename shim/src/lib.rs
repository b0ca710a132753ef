//! # p11trace-shim
//!
//! A minimal PKCS#11 module (`libp11trace_shim.so`). The application loads it instead of the real
//! module; it loads the real one (`P11TRACE_MODULE`, else `PKCS11SPY`), forwards every call, times
//! it and queues a compact record that a background thread sends to the recorder over
//! ipc-channel. Secrets never leave this process: PINs and data buffers are never read, attribute
//! values only through an allowlist.
//!
//! It must never crash, block or noticeably slow the host. Hence: no panic crosses the FFI
//! boundary, the calling thread never waits for I/O (a bounded lock-free queue, drop-newest when
//! full, every drop counted), nothing is written to stdout, at most one stderr line per kind of
//! problem.
//!
//! Layout: `entry` (exported functions) → `tables` (traced function lists, generated from the one
//! function table in `p11trace_record`) → `trace` (hot path) with `roles`/`capture` (argument
//! capture) → `client` (queue, identity, fork generations) → `sender`/`connection` (delivery).
//!
//! Must not depend on arrow, parquet or polars: it is linked into every traced process.

// CK_ULONG is C `unsigned long`: 64-bit here, 32-bit on other targets. The `as u64` casts that
// look redundant on x86-64 keep the record types target-independent.
#![allow(clippy::unnecessary_cast)]

mod capture;
mod client;
mod config;
mod connection;
mod diag;
mod entry;
mod ffi;
mod ops;
mod real;
mod redact;
mod roles;
mod sender;
mod tables;
mod trace;

pub use entry::{C_GetFunctionList, C_GetInterface, C_GetInterfaceList};
