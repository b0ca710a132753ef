//! Command-line options of `p11trace-recorder`.

use std::path::PathBuf;

use clap::Parser;

/// Records PKCS#11 calls from every process traced by libp11trace_shim.so into a Parquet dataset.
///
/// Start it once; point applications at the shim (P11TRACE_MODULE=<real module>); stop it with
/// Ctrl-C or SIGTERM: it flushes every record it received, closes its files and prints a summary.
/// Only processes of the recorder's own user can connect.
///
/// Exit status: 0 after a clean stop, 1 on a runtime error, 2 on a usage error.
#[derive(Debug, Clone, Parser)]
#[command(name = "p11trace-recorder", version)]
pub struct Options {
    /// Dataset folder (created if missing). Holds calls/date=YYYY-MM-DD/*.parquet,
    /// clients/date=YYYY-MM-DD/*.parquet, and the working folders .tmp/ and .wal/.
    #[arg(long, value_name = "DIR")]
    pub dataset: PathBuf,

    /// Unix socket to listen on; `P11TRACE_SOCKET` is the variable the shim reads too.
    /// [default: /run/user/<uid>/p11trace.sock where /run/user/<uid> exists,
    /// else /tmp/p11trace-<uid>/p11trace.sock; the shim uses the same rule]
    #[arg(long, value_name = "PATH", env = "P11TRACE_SOCKET")]
    pub socket: Option<PathBuf>,

    /// Identifier stored in every row of this run [default: a new UUIDv7].
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,

    /// Close a Parquet file once it holds this many rows.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub roll_rows: u64,

    /// Close a Parquet file once it has been open this many seconds (whichever comes first).
    #[arg(long, value_name = "S", default_value_t = 60)]
    pub roll_secs: u64,

    /// Print one statistics line to stderr every SECS seconds (0 = never).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub stats_every: u64,

    /// Exit once the first client has connected and every client has disconnected.
    #[arg(long)]
    pub once: bool,

    /// fsync the write-ahead log every MS milliseconds (0: after every batch). A power cut loses
    /// at most this much of what was received; a process crash loses nothing the log holds.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    pub fsync_ms: u64,

    /// Cap of the write-ahead log. While Parquet files cannot be written (disk full) the log
    /// grows; at the cap, incoming call records are dropped, counted and reported.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 30)]
    pub wal_max_bytes: u64,
}
