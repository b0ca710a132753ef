//! # p11trace-recorder
//!
//! The long-running capture service. Shims connect to its Unix socket; it writes what they send
//! into a Parquet dataset (`calls`, `clients`) with the one fixed schema of `p11trace-dataset`.
//!
//! Actors with one job each, joined by bounded channels, sharing no mutable state but atomic
//! counters ([`stats`]):
//!
//! ```text
//!  shims ─unix socket─▶ acceptor ─control─▶ capture ─events─▶ wal ─logged─▶ batcher ─jobs─▶ writer ─▶ calls/…, clients/…
//!        (SO_PEERCRED,  (one-shot server,    (a reader     (append,     (Arrow batches  (open file per
//!         same uid)      token, EOF watch)    thread per    CRC, fsync   per table and   table+date, roll,
//!                                             client:       policy)      date)           rename) ──covered──▶ wal
//!                                             decode,
//!                                             validate)
//! ```
//!
//! Backpressure: every channel is bounded (events 64, logged 64, jobs 16). When the writer
//! falls behind, the batcher blocks, then the log, then capture, which stops reading; the shims'
//! socket buffers fill and each shim drops (and counts) what it cannot send. Nothing the recorder
//! has read is dropped — except when the write-ahead log is at `--wal-max-bytes` (Parquet writes
//! failing), where incoming call records are refused, counted (`dropped_by_recorder`) and reported.
//!
//! Memory is bounded by the channel capacities — 128 events of at most one 1 MiB client message
//! each (in practice ~48 KiB), 16 record batches of at most 64 Ki rows — plus each open Parquet
//! file, encoded and compressed in memory (at most `writer::FILE_MAX_BYTES`), plus files that
//! failed to be stored and wait to be stored again (at most `writer::PENDING_MAX_BYTES`), plus
//! the batcher's builders (at most 64 Ki rows between flushes).
//!
//! With `--metrics ADDR`, a `metrics` thread serves Prometheus text on `/metrics` ([`metrics`]):
//! the batcher's call counts, published once per flush, and the shared [`stats`].
//!
//! Crash safety: see [`wal`] (what a crash or power cut can lose) and [`recovery`] (replay on
//! start). Security: see [`acceptor`] and [`dataset`] — version 1 accepts clients of the
//! recorder's own uid only.
//!
//! Object storage (`--dataset s3://…`): the dataset folder becomes a local spool and an
//! [`upload`] actor moves each finished file into the store through `p11trace-store`, proving
//! it arrived before letting it go; [`spool`] places the spool and names the host.
//!
//! Two subcommands share the binary: [`oneshot`] (`run -- COMMAND`: a private recorder for
//! one command, then the analysis from the `p11trace-query` binary beside this one) and
//! [`doctor`] (checks a tracing setup: loads modules through `p11trace-ffi`, says a hello).
//!
//! Must not depend on polars (the query tool's) or be linked into traced processes.

pub mod acceptor;
pub mod batcher;
pub mod capture;
pub mod crash;
pub mod dataset;
pub mod doctor;
pub mod events;
pub mod ledger;
pub mod metrics;
pub mod oneshot;
pub mod options;
pub mod recovery;
pub mod spool;
pub mod stats;
pub mod upload;
pub mod wal;
pub mod writer;

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::acceptor::{Acceptor, Control};
pub use crate::options::Options;
use crate::stats::Stats;
use p11trace_dataset::layout::Layout;

/// Capacity of the capture → log and log → batcher channels (events; each at most one client
/// message, typically a few thousand records, ~250 KB at 1 M calls/s). Enough to ride out a
/// log fsync (100 ms of traffic is ~25 messages); more only adds memory once the writer falls
/// behind: at 1024 the recorder's RSS reached ~400 MiB under overload (measured, `just bench`).
pub const EVENT_QUEUE: usize = 64;
/// Capacity of the batcher → writer channel (record batches).
pub const JOB_QUEUE: usize = 16;

/// The secret for `P11TRACE_REDACT=labels`: `--label-key FILE` (a fleet's hosts share one, so
/// hashed labels join across hosts), else the dataset's own, created on first use (`DIR/.key`,
/// 0600).
fn label_key(dataset: &Layout, given: Option<&Path>) -> Result<[u8; 32]> {
    if let Some(path) = given {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read {} (--label-key)", path.display()))?;
        return bytes.try_into().map_err(|bytes: Vec<u8>| {
            anyhow::anyhow!(
                "{} (--label-key) holds {} bytes, not 32; make one with `head -c 32 /dev/urandom`",
                path.display(),
                bytes.len()
            )
        });
    }
    let path = dataset.root.join(".key");
    if let Ok(bytes) = std::fs::read(&path) {
        return bytes.try_into().map_err(|_| {
            anyhow::anyhow!(
                "{} is not a 32-byte key; remove it to make a new one",
                path.display()
            )
        });
    }
    let key = acceptor::random_bytes::<32>();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(&key)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(key)
}

/// What a run did, for the summary line.
#[derive(Debug)]
pub struct Summary {
    pub socket: PathBuf,
    pub line: String,
}

/// Raises the soft limit on open descriptors to the hard limit: each client holds two (its
/// rendezvous stream and data channel), and the default soft limit (1024) would refuse clients
/// long before memory runs out. What is left of a shortage, the acceptor waits out.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the rlimit we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Wakes the acceptor's blocking `accept` so it can see the stop flag.
fn wake_acceptor(socket: &Path) {
    let _ = UnixStream::connect(socket);
}

/// Runs the recorder until SIGINT/SIGTERM (or, with `--once`, until every client has left).
pub fn run(options: Options) -> Result<Summary> {
    // Everything written from here on is private to the user whatever the umask: rows hold
    // labels, ids and executable paths.
    // SAFETY: umask(2) only sets this process's file-mode creation mask; it cannot fail.
    unsafe { libc::umask(0o077) };
    raise_descriptor_limit();
    let host = spool::host_name(options.host.as_deref())?;
    // A dataset in object storage: everything local (log, open files, finished files until
    // they are uploaded) lives in the spool, a dataset folder of its own.
    let url = options
        .dataset
        .to_str()
        .filter(|text| p11trace_store::is_url(text))
        .map(str::to_owned);
    let remote = match &url {
        Some(url) => Some(p11trace_store::Remote::open(url)?),
        None => None,
    };
    if let Some(url) = &url {
        spool::note_missing_credentials(url);
    }
    let root = match &url {
        Some(url) => spool::spool_for(url, options.spool.as_deref())?,
        None => options.dataset.clone(),
    };
    let _lock = dataset::lock(&root)?;
    if let Some(url) = &url {
        spool::bind(&root, url)?;
    }
    let dataset = dataset::open(&root)?;
    let socket = options.socket.clone().unwrap_or_else(|| {
        p11trace_record::socket::default_socket_path(p11trace_record::socket::current_uid())
    });
    let run_id = options
        .run_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let key = label_key(&dataset, options.label_key.as_deref())?;
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    // Bound before anything is accepted: a taken port is an error now, not a silent absence.
    let metrics_shared = metrics::Shared::default();
    let metrics_server = options
        .metrics
        .map(|addr| metrics::Server::start(addr, metrics_shared.clone(), stats.clone()))
        .transpose()?;

    // Replay what a previous run left in the log before accepting anyone.
    let ledger = ledger::Ledger::load(&dataset.wal());
    let (ledger, recovered) = recovery::recover(&dataset, &run_id, &host, &stats, ledger)?;
    if recovered.segments > 0 {
        eprintln!(
            "p11trace-recorder: recovered {} logged events from {} write-ahead log segment(s){}",
            recovered.events,
            recovered.segments,
            if recovered.torn.is_empty() {
                String::new()
            } else {
                format!(" (cut at: {})", recovered.torn.join("; "))
            }
        );
    }
    let listener = dataset::listen(&socket)?;
    let wal = wal::Wal::create(
        &dataset.wal(),
        Duration::from_millis(options.fsync_ms),
        options.wal_max_bytes,
    )
    .context("cannot start the write-ahead log")?;
    let crash = crash::Crash::from_env();
    let acceptor_crash = crash.clone();

    let (control_tx, control_rx) = crossbeam_channel::unbounded::<Control>();
    let (event_tx, event_rx) = crossbeam_channel::bounded(EVENT_QUEUE);
    let (logged_tx, logged_rx) = crossbeam_channel::bounded(EVENT_QUEUE);
    let (job_tx, job_rx) = crossbeam_channel::bounded(JOB_QUEUE);
    let (covered_tx, covered_rx) = crossbeam_channel::unbounded();

    let signals = Arc::new(AtomicU32::new(0));
    {
        let control = control_tx.clone();
        let signals = signals.clone();
        let stop = stop.clone();
        let socket = socket.clone();
        ctrlc::set_handler(move || {
            if signals.fetch_add(1, Ordering::AcqRel) > 0 {
                // A second signal during the drain: leave now; the log keeps what was received.
                eprintln!("p11trace-recorder: second signal, exiting without finishing the drain");
                // SAFETY: _exit ends the process immediately, by design.
                unsafe { libc::_exit(1) };
            }
            stop.store(true, Ordering::Release);
            let _ = control.send(Control::Shutdown);
            wake_acceptor(&socket);
        })
        .context("cannot install the signal handler")?;
    }

    let spawn = |name: &str| std::thread::Builder::new().name(name.to_owned());
    let writer = writer::Writer {
        jobs: job_rx,
        dataset: dataset.clone(),
        run_id: run_id.clone(),
        host: host.clone(),
        spool_max_bytes: remote.is_some().then_some(options.spool_max_bytes),
        stopping: stop.clone(),
        roll_rows: options.roll_rows.max(1),
        roll_secs: Duration::from_secs(options.roll_secs.max(1)),
        stats: stats.clone(),
        covered: Some(covered_tx),
        crash: crash.clone(),
    };
    let writer = spawn("writer").spawn(move || writer.run())?;
    let batcher = batcher::Batcher {
        events: logged_rx,
        jobs: job_tx,
        stats: stats.clone(),
        ledger,
        metrics: metrics_server
            .as_ref()
            .map(|_| metrics::Tally::new(metrics_shared)),
    };
    let batcher = spawn("batcher").spawn(move || batcher.run())?;
    let wal_actor = wal::WalActor {
        input: event_rx,
        output: logged_tx,
        covered: covered_rx,
        wal,
        stats: stats.clone(),
        crash: crash.clone(),
        stopping: stop.clone(),
    };
    let wal_actor = spawn("wal").spawn(move || wal_actor.run())?;
    let capture = capture::Capture {
        control: control_rx,
        events: event_tx,
        run_id: run_id.clone(),
        host: options.host.clone(),
        stats: stats.clone(),
        once: options.once,
        crash: crash.clone(),
    };
    let capture = spawn("capture").spawn(move || capture.run())?;
    let acceptor_control = control_tx.clone();
    let acceptor = Acceptor {
        listener,
        control: control_tx,
        run_id: run_id.clone(),
        label_key: key,
        stop: stop.clone(),
        stats: stats.clone(),
    };
    // An acceptor that ends before a stop was asked for (a panic, a thread it could not start)
    // would leave the recorder running with nobody able to connect: it stops the recorder
    // instead, which drains what it has and exits 1.
    let acceptor = {
        let stop = stop.clone();
        let crash = acceptor_crash;
        spawn("acceptor").spawn(move || {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                crash.fail_at("acceptor");
                acceptor.run();
            }));
            let failed = ran.is_err() || !stop.load(Ordering::Acquire);
            if failed {
                eprintln!("p11trace-recorder: the acceptor stopped; shutting down");
                let _ = acceptor_control.send(Control::Shutdown);
            }
            failed
        })?
    };
    let finished = Arc::new(AtomicBool::new(false));
    stats.remote.store(remote.is_some(), Ordering::Relaxed);
    let uploader = match remote {
        Some(remote) => {
            let uploader = upload::Uploader {
                remote,
                spool: dataset.clone(),
                stats: stats.clone(),
                finished: finished.clone(),
                shutdown_timeout: Duration::from_secs(options.shutdown_timeout),
                part_bytes: options.upload_part_bytes,
                crash: crash.clone(),
            };
            Some(spawn("uploader").spawn(move || uploader.run())?)
        }
        None => None,
    };
    let reporter = (options.stats_every > 0).then(|| {
        let stats = stats.clone();
        let stop = stop.clone();
        let every = Duration::from_secs(options.stats_every);
        std::thread::spawn(move || stats::report_every(&stats, every, &stop))
    });

    if let Some(server) = &metrics_server {
        eprintln!(
            "p11trace-recorder: metrics on http://{}/metrics",
            server.addr()
        );
    }
    eprintln!("p11trace-recorder: listening on {}", socket.display());

    let captured = capture
        .join()
        .map_err(|_| anyhow::anyhow!("the capture actor panicked"))?;
    stop.store(true, Ordering::Release);
    wake_acceptor(&socket);
    let acceptor_failed = acceptor.join().unwrap_or(true);
    let _ = std::fs::remove_file(&socket);
    let mut ledger = batcher
        .join()
        .map_err(|_| anyhow::anyhow!("the batcher actor panicked"))?;
    let written = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer actor panicked"))?;
    finished.store(true, Ordering::Release);
    let left = match uploader {
        Some(uploader) => Some(
            uploader
                .join()
                .map_err(|_| anyhow::anyhow!("the uploader actor panicked"))?,
        ),
        None => None,
    };
    let logged = wal_actor
        .join()
        .map_err(|_| anyhow::anyhow!("the log actor panicked"))?;
    if let Some(reporter) = reporter {
        let _ = reporter.join();
    }
    captured.context("capture failed")?;
    logged.context("the write-ahead log failed")?;
    written.context("writing the dataset failed")?;
    ledger
        .save(&dataset.wal())
        .context("cannot save the ledger")?;
    if acceptor_failed {
        anyhow::bail!(
            "the acceptor actor stopped: no client could connect any more (what was received \
             is written)"
        );
    }
    let line = format!(
        "stopped: clients={} records={} files={} dropped={} lost={} dropped_by_recorder={} rejected={} protocol_errors={}",
        Stats::get(&stats.clients_connected),
        Stats::get(&stats.records_received),
        Stats::get(&stats.files_written),
        Stats::get(&stats.dropped_by_clients),
        Stats::get(&stats.lost),
        Stats::get(&stats.dropped_by_recorder),
        Stats::get(&stats.rejected),
        Stats::get(&stats.protocol_errors),
    );
    let line = match (&url, left) {
        (Some(url), Some(left)) => {
            if left.files > 0 {
                eprintln!(
                    "p11trace-recorder: {} file(s) ({} bytes) not uploaded to {url} within \
                     --shutdown-timeout; they stay in the spool {} and the next start uploads them",
                    left.files,
                    left.bytes,
                    root.display()
                );
            }
            format!(
                "{line} uploaded={} left_in_spool={}",
                Stats::get(&stats.files_uploaded),
                left.files
            )
        }
        _ => line,
    };
    Ok(Summary { socket, line })
}
