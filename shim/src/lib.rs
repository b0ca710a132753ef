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
//! Layout (each module uses only modules to its right; there is no import loop):
//! `entry` (exported functions) → `tables` (traced function lists, generated from the one
//! function table in `p11trace_record`) → `trace` (hot path) → `roles`/`capture` (argument
//! capture into the `Call` being recorded) → `client` (queue, fork generations) → `sender`
//! (delivery) → `batch` (messages cut to one ipc fragment) and `connection` (the recorder socket). `real` (the real module and its tables) is
//! used by `entry`, `tables` and `trace`, and itself uses only leaves. Leaves, used by whoever
//! needs them: `config`, `diag`, `ops`, `redact`, `clock`, `identity`, and `queued` (the compact
//! record on the queue and its pooled box of variable-size parts, turned into the wire record
//! when the sender takes it). The C definitions come
//! from the `p11trace-ffi` crate.
//!
//! What a lower module needs from a higher one is handed down, never imported: `entry` gives
//! `tables` its in-table entry points (`tables::EntryPoints`), `real` the address of its own
//! `C_GetFunctionList`, and `client` the internal `C_GetInfo` and the module path
//! (`client::Upcalls`, registered once the real module is loaded); the sender reaches the client
//! only through the `sender::Source` trait, which the client implements.
//!
//! Besides the three PKCS#11 entry points it exports one function of its own,
//! `p11trace_shim_version` (a static string; nothing is initialised), by which
//! `p11trace-recorder doctor` recognises the shim and its version.
//!
//! Must not depend on arrow, parquet or polars: it is linked into every traced process.

// CK_ULONG is C `unsigned long`: 64-bit here, 32-bit on other targets. The `as u64` casts that
// look redundant on x86-64 keep the record types target-independent.
#![allow(clippy::unnecessary_cast)]

mod batch;
mod capture;
mod client;
mod clock;
mod config;
mod connection;
mod diag;
mod entry;
mod identity;
mod ops;
mod queued;
mod real;
mod redact;
mod roles;
mod sender;
mod tables;
mod trace;

pub use entry::{C_GetFunctionList, C_GetInterface, C_GetInterfaceList, p11trace_shim_version};
