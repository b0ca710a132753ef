//! Command-line options of `p11trace-recorder`: the recorder itself (`--dataset DIR ...`, the
//! way it has always been started) and its two subcommands, `run` and `doctor`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
Examples:
  p11trace-recorder --dataset ./trace                  # record until Ctrl-C
  p11trace-recorder --dataset ./trace --metrics 9464   # and serve http://127.0.0.1:9464/metrics
  AWS_REGION=eu-west-1 p11trace-recorder --dataset s3://audit/p11trace --host web-7
  p11trace-recorder run -- pkcs11-tool --module /usr/lib/p11trace/libp11trace_shim.so -L
  p11trace-recorder doctor --shim ./libp11trace_shim.so --module /usr/lib/softhsm/libsofthsm2.so

`run` traces one command like `strace -c`; `doctor` says why nothing is recorded. Both live in
this binary (not in p11trace-query): they speak the recorder's protocol and load modules.";

/// Records PKCS#11 calls from every process traced by libp11trace_shim.so into a Parquet dataset.
///
/// Start it once; point applications at the shim (P11TRACE_MODULE=<real module>); stop it with
/// Ctrl-C or SIGTERM: it flushes every record it received, closes its files and prints a summary.
/// Only processes of the recorder's own user can connect.
///
/// Exit status: 0 after a clean stop, 1 on a runtime error, 2 on a usage error.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "p11trace-recorder",
    version,
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true,
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Dataset folder (created if missing), or object storage: s3://BUCKET/PREFIX, gs://…,
    /// az://…, file:///PATH. Holds calls/date=YYYY-MM-DD/*.parquet and
    /// clients/date=YYYY-MM-DD/*.parquet; a folder also the working folders .tmp/ and .wal/.
    /// For a store, credentials and endpoint come from the environment (AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP, GOOGLE_*, AZURE_*).
    #[arg(long, value_name = "DIR|URL", required = true)]
    pub dataset: Option<PathBuf>,

    /// With a store: the local folder for the write-ahead log, the files being written and the
    /// finished files until they are uploaded and verified
    /// [default: $XDG_STATE_HOME/p11trace/spool/<dataset URL>, else ~/.local/state/…].
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,

    /// With a store: finished files the spool may hold while uploads fail. Past it, files wait
    /// in memory (256 MiB), then the writer waits: the pipeline behind it stops and the shims
    /// drop and count. [default: 4294967296, 4 GiB]
    #[arg(long, value_name = "BYTES")]
    pub spool_max_bytes: Option<u64>,

    /// With a store: once everything received is written into the spool (after SIGTERM,
    /// Ctrl-C or the end of --once), keep uploading for at most this many seconds; what is left
    /// stays in the spool for the next start. [default: 30]
    #[arg(long, value_name = "SECS")]
    pub shutdown_timeout: Option<u64>,

    /// The 32-byte secret that hashes labels under P11TRACE_REDACT=labels [default: the
    /// dataset's own DIR/.key, or the spool's]. Give a fleet's recorders the same file so that
    /// hashed labels join across hosts.
    #[arg(long, value_name = "FILE")]
    pub label_key: Option<PathBuf>,

    /// This recorder's host name, in file names (part-<host>-<writer>-<n>.parquet: many hosts
    /// write into one prefix) and in the `host` column of its rows [default: the machine's].
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,

    /// With a store: files larger than this go up as a multipart upload in parts of this size
    /// (S3 wants at least 5 MiB a part).
    #[arg(long, value_name = "BYTES", hide = true,
          value_parser = clap::value_parser!(u64).range(1024..=5 << 30))]
    pub upload_part_bytes: Option<u64>,

    /// Unix socket to listen on; `P11TRACE_SOCKET` is the variable the shim reads too.
    /// [default: /run/user/<uid>/p11trace.sock where /run/user/<uid> exists,
    /// else /tmp/p11trace-<uid>/p11trace.sock; the shim uses the same rule]
    #[arg(long, value_name = "PATH")]
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

    /// Serve live Prometheus metrics on http://ADDR/metrics: calls by function and rv, latency
    /// histograms, drops, queues (names in schemas/metrics.md). ADDR is PORT (on 127.0.0.1),
    /// IP:PORT or localhost:PORT; any other address is bound as given, without authentication.
    #[arg(long, value_name = "ADDR", value_parser = crate::metrics::parse_addr)]
    pub metrics: Option<std::net::SocketAddr>,
}

/// `--spool-max-bytes` unless given.
pub const SPOOL_MAX_BYTES: u64 = 4 << 30;
/// `--shutdown-timeout` unless given.
pub const SHUTDOWN_TIMEOUT_SECS: u64 = 30;
/// `--upload-part-bytes` unless given.
pub const UPLOAD_PART_BYTES: usize = 8 << 20;

/// The subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    Run(RunArgs),
    Doctor(DoctorArgs),
}

/// What the recorder runs with (from `--dataset DIR ...`).
#[derive(Debug, Clone)]
pub struct Options {
    pub dataset: PathBuf,
    pub socket: Option<PathBuf>,
    pub run_id: Option<String>,
    pub roll_rows: u64,
    pub roll_secs: u64,
    pub stats_every: u64,
    pub once: bool,
    pub fsync_ms: u64,
    pub wal_max_bytes: u64,
    pub spool: Option<PathBuf>,
    pub spool_max_bytes: u64,
    pub shutdown_timeout: u64,
    pub host: Option<String>,
    pub label_key: Option<PathBuf>,
    pub upload_part_bytes: usize,
    pub metrics: Option<std::net::SocketAddr>,
}

impl Options {
    /// The options of a recorder on `dataset` with every other setting at its default.
    pub fn new(dataset: PathBuf) -> Options {
        Options {
            dataset,
            socket: None,
            run_id: None,
            roll_rows: 1_000_000,
            roll_secs: 60,
            stats_every: 0,
            once: false,
            fsync_ms: 100,
            wal_max_bytes: 1 << 30,
            spool: None,
            spool_max_bytes: SPOOL_MAX_BYTES,
            shutdown_timeout: SHUTDOWN_TIMEOUT_SECS,
            host: None,
            label_key: None,
            upload_part_bytes: UPLOAD_PART_BYTES,
            metrics: None,
        }
    }
}

impl Cli {
    /// The recorder's options, when no subcommand was given (clap then required `--dataset`).
    /// `P11TRACE_SOCKET` stands in for `--socket`, as for the shim.
    pub fn options(&self) -> Option<Options> {
        Some(Options {
            dataset: self.dataset.clone()?,
            socket: self
                .socket
                .clone()
                .or_else(|| std::env::var_os("P11TRACE_SOCKET").map(PathBuf::from)),
            run_id: self.run_id.clone(),
            roll_rows: self.roll_rows,
            roll_secs: self.roll_secs,
            stats_every: self.stats_every,
            once: self.once,
            fsync_ms: self.fsync_ms,
            wal_max_bytes: self.wal_max_bytes,
            spool: self.spool.clone(),
            spool_max_bytes: self.spool_max_bytes.unwrap_or(SPOOL_MAX_BYTES),
            shutdown_timeout: self.shutdown_timeout.unwrap_or(SHUTDOWN_TIMEOUT_SECS),
            host: self.host.clone(),
            label_key: self.label_key.clone(),
            upload_part_bytes: self.upload_part_bytes.map_or(UPLOAD_PART_BYTES, |b| {
                usize::try_from(b).unwrap_or(usize::MAX)
            }),
            metrics: self.metrics,
        })
    }

    /// An option that only a dataset in object storage takes, given with a dataset folder.
    pub fn store_option_without_store(&self) -> Option<&'static str> {
        let url = self
            .dataset
            .as_deref()
            .and_then(|d| d.to_str())
            .is_some_and(p11trace_store::is_url);
        let given = [
            ("--spool", self.spool.is_some()),
            ("--spool-max-bytes", self.spool_max_bytes.is_some()),
            ("--shutdown-timeout", self.shutdown_timeout.is_some()),
            ("--upload-part-bytes", self.upload_part_bytes.is_some()),
        ];
        let (flag, _) = given.into_iter().find(|(_, given)| *given)?;
        (!url).then_some(flag)
    }
}

const RUN_AFTER_HELP: &str = "\
Examples:
  p11trace-recorder run -- pkcs11-tool --module ./libp11trace_shim.so --list-slots
  p11trace-recorder run --module /usr/lib/softhsm/libsofthsm2.so --dataset ./trace -- ./my-app
  p11trace-recorder run -- sh -c 'app1; app2'   # every process of the command is recorded

The command must load the shim (libp11trace_shim.so) as its PKCS#11 module. The recorder listens
on a private socket (a fresh 0700 folder) that only this command is told about; P11TRACE_SOCKET
(and P11TRACE_MODULE, with --module) is set in the command's environment. Ctrl-C and SIGTERM go
to the command first; the recorder drains once it has exited. The analysis (p11trace-query
analyze, found beside this binary) is printed to stderr, then `dataset: PATH`.

Exit status: the command's own; 128+N if it died of signal N; 127 if it was not found, 126 if
it could not be executed; 1 if the recorder could not be started (the command is then not run);
2 on a usage error.";

/// Trace one command: a private recorder for as long as it runs, then the analysis.
#[derive(Debug, Clone, Args)]
#[command(after_help = RUN_AFTER_HELP)]
pub struct RunArgs {
    /// Dataset folder to write [default: a fresh ./p11trace-run-<UTC time>-<pid>, named on stderr].
    #[arg(long, value_name = "DIR")]
    pub dataset: Option<PathBuf>,

    /// Real PKCS#11 module the shim forwards to (sets P11TRACE_MODULE for the command)
    /// [default: whatever the command's environment or /etc/p11trace.conf says].
    #[arg(long, value_name = "REAL.so")]
    pub module: Option<PathBuf>,

    /// The command and its arguments (after `--`).
    #[arg(
        value_name = "COMMAND",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<OsString>,
}

const DOCTOR_AFTER_HELP: &str = "\
Examples:
  p11trace-recorder doctor                       # what the environment says
  p11trace-recorder doctor --shim /usr/lib/p11trace/libp11trace_shim.so \\
      --module /usr/lib/softhsm/libsofthsm2.so --dataset ./trace
  p11trace-recorder doctor --format json | jq -e '.ok'

Defaults are what the shim would see: P11TRACE_MODULE (else PKCS11SPY, else `module` in
P11TRACE_CONFIG or /etc/p11trace.conf), P11TRACE_SOCKET (else `socket` in that file, else
/run/user/<uid>/p11trace.sock or /tmp/p11trace-<uid>/p11trace.sock). A check without the input it
needs is `skipped`, never failed. Every failure says what to do. The JSON keys are documented in
schemas/doctor.md. (doctor is in p11trace-recorder, not p11trace-query: it loads PKCS#11 modules
and speaks the recorder's protocol.)

Exit status: 0 when every check that ran passed, 1 when one failed, 2 on a usage error.";

/// Check a tracing setup: module, shim, socket, recorder, dataset folder, environment.
///
/// The pkcs11-spy guide's Troubleshooting section as a command: the real module loads and answers
/// C_GetInfo; the shim is p11trace's (and which version); the socket's folder is one the shim
/// accepts; a recorder listens there and accepts a hello; the dataset folder is writable; which
/// variables are set, what is missing, and what a pkcs11-spy setup should change.
#[derive(Debug, Clone, Args)]
#[command(after_help = DOCTOR_AFTER_HELP)]
pub struct DoctorArgs {
    /// The shim the application is pointed at: is it p11trace's, and which version?
    #[arg(long, value_name = "PATH")]
    pub shim: Option<PathBuf>,

    /// The real module [default: P11TRACE_MODULE, PKCS11SPY, then the configuration file].
    #[arg(long, value_name = "PATH")]
    pub module: Option<PathBuf>,

    /// The recorder's socket [default: P11TRACE_SOCKET, the configuration file, the default rule].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// The dataset folder the recorder writes (is it writable?).
    #[arg(long, value_name = "DIR")]
    pub dataset: Option<PathBuf>,

    /// `text` for people, `json` for scripts (keys in schemas/doctor.md).
    #[arg(long, value_enum, default_value_t = DoctorFormat::Text)]
    pub format: DoctorFormat,
}

/// Output of `doctor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DoctorFormat {
    Text,
    Json,
}
