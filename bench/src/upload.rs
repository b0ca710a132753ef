//! Benchmark 8: the cost per host of `--dataset s3://…` (issue 15). Two workloads — 1 M
//! `C_GetSessionInfo` calls from 4 paced clients, and a signing mix (find the key, sign with
//! EC P-256 or RSA-2048) of about 200 000 calls from 2 clients — each run twice: the recorder
//! writing a local dataset, and the recorder uploading to a real S3-compatible server (moto, on
//! loopback) through its own spool. Reported per million calls: bytes uploaded (the objects'
//! sizes) against the local dataset's bytes, objects, recorder CPU-seconds local and uploading
//! (the ratio is the figure that travels: absolute CPU depends on the build and the machine), the
//! recorder's peak RSS both ways, and the time from SIGTERM to its exit with everything uploaded.
//!
//! Both recorders run with the default roll (a file per 1 M rows or 60 s, whichever comes
//! first): at a host's real rate the 60 s roll sets the number of objects, not the calls.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use p11trace_tests::s3::S3Server;
use p11trace_tests::{Launch, Provider, Token};
use serde::Serialize;

use crate::Ctx;
use crate::client::Op;
use crate::measure::{self, parquet_bytes, parquet_rows};
use crate::report::{Line, bytes};
use crate::setup::{RecorderRun, Rig, Route, token_with_keys};

const BENCH: &str = "8 upload";
const BUCKET: &str = "bench";
const HOST: &str = "bench-host";
/// How far the uploaded bytes may be from the local dataset's (same writer, same settings).
pub const BYTES_TOLERANCE: f64 = 0.05;
/// One round of the signing mix: three key look-ups, two EC signatures, one RSA signature
/// (3 × 3 + 3 × 2 = 15 calls).
const MIX: [Op; 6] = [
    Op::Find,
    Op::SignEc,
    Op::Find,
    Op::SignEc,
    Op::Find,
    Op::SignRsa,
];

/// What the clients do.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// `C_GetSessionInfo` from `clients` processes, `calls` each, at `rate` calls/s in all.
    SessionInfo {
        clients: usize,
        calls: u64,
        rate: f64,
    },
    /// [`MIX`] `rounds` times in each of `clients` processes, as fast as they go.
    SigningMix { clients: usize, rounds: u64 },
}

impl Workload {
    fn label(self) -> String {
        match self {
            Workload::SessionInfo {
                clients,
                calls,
                rate,
            } => format!(
                "C_GetSessionInfo, {clients} clients × {calls} at {:.0}k calls/s",
                rate / 1e3
            ),
            Workload::SigningMix { clients, rounds } => format!(
                "signing mix (find ×3, EC sign ×2, RSA sign ×1), {clients} client(s) × {rounds} rounds"
            ),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Workload::SessionInfo { .. } => "session-info",
            Workload::SigningMix { .. } => "signing-mix",
        }
    }

    /// Runs the clients against `rig`'s recorder until they are done.
    fn drive(self, rig: &Rig) -> Result<()> {
        let env = rig.env();
        let (clients, ops, args): (usize, &[Op], Vec<String>) = match self {
            Workload::SessionInfo {
                clients,
                calls,
                rate,
            } => {
                let args = ["--batches", "1", "--warmup", "0", "--ops-per-batch"]
                    .map(str::to_owned)
                    .into_iter()
                    .chain([calls.to_string(), "--rate".into()])
                    .chain([(rate / clients as f64).to_string()])
                    .collect();
                (clients, &[Op::SessionInfo], args)
            }
            Workload::SigningMix { clients, rounds } => {
                let args = [
                    "--batches",
                    "1",
                    "--warmup",
                    "0",
                    "--ops-per-batch",
                    "1",
                    "--repeat",
                ]
                .map(str::to_owned)
                .into_iter()
                .chain([rounds.to_string()])
                .collect();
                (clients, &MIX, args)
            }
        };
        let running: Vec<_> = (0..clients)
            .map(|index| {
                let mut command = env.client(&rig.token, Route::Shim, ops);
                command.args(&args);
                let stderr = rig.dir().join(format!("client-{index}.err"));
                measure::start(&mut command, None, Some(&stderr)).map(|p| (p, stderr))
            })
            .collect::<Result<_>>()?;
        for (process, stderr) in running {
            if !process.finish()?.success {
                bail!(
                    "a {} client failed: {}",
                    self.name(),
                    std::fs::read_to_string(stderr).unwrap_or_default()
                );
            }
        }
        Ok(())
    }
}

/// One recorder's run of a workload.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    /// Rows in the dataset's `calls` (local: its files; upload: the objects, downloaded).
    pub rows: u64,
    /// Call records the recorder received (its `records=`).
    pub records: u64,
    pub dropped: u64,
    /// Parquet files (`calls` + `clients`): local files, or objects in the bucket.
    pub files: u64,
    /// Of which in `calls`.
    pub calls_files: u64,
    pub bytes: u64,
    /// The recorder's `uploaded=` and `left_in_spool=` (0 for a local dataset).
    pub uploaded: u64,
    pub left_in_spool: u64,
    pub recorder_cpu_secs: f64,
    pub recorder_max_rss: u64,
    /// From SIGTERM to the recorder's exit (for an upload: with everything uploaded).
    pub drain_secs: f64,
}

impl Side {
    fn per_million(&self, value: f64) -> f64 {
        value * 1e6 / self.rows.max(1) as f64
    }
}

/// Both runs of one workload.
#[derive(Debug, Clone, Serialize)]
pub struct Upload {
    pub workload: Workload,
    /// The binaries are a debug build: CPU-seconds are not representative (ratios only).
    pub debug_build: bool,
    pub local: Side,
    pub upload: Side,
    pub uploaded_bytes_per_million: f64,
    pub local_bytes_per_million: f64,
    pub objects_per_million: f64,
    pub cpu_secs_per_million_local: f64,
    pub cpu_secs_per_million_upload: f64,
    pub cpu_ratio: f64,
}

/// Stops the rig's recorder, timing SIGTERM → exit.
fn stop(rig: Rig) -> Result<(RecorderRun, p11trace_tests::Recorder, f64)> {
    let signalled = Instant::now();
    let (run, recorder) = rig.stop()?;
    Ok((run, recorder, signalled.elapsed().as_secs_f64()))
}

/// Rows, (files, of which calls), bytes.
type Found = (u64, (u64, u64), u64);

fn side(run: &RecorderRun, (rows, (files, calls_files), bytes): Found, drain_secs: f64) -> Side {
    Side {
        rows,
        calls_files,
        records: run.summary.get("records"),
        dropped: run.summary.undelivered(),
        files,
        bytes,
        uploaded: run.summary.get("uploaded"),
        left_in_spool: run.summary.get("left_in_spool"),
        recorder_cpu_secs: run.cost.cpu.as_secs_f64(),
        recorder_max_rss: run.cost.max_rss,
        drain_secs,
    }
}

fn local(ctx: &Ctx, token: Token, workload: Workload) -> Result<Side> {
    let dir = tempfile::tempdir_in(&ctx.scratch)?;
    let rig = Rig::launch(ctx, token, Launch::in_dir(dir).args(&["--host", HOST]))?;
    workload.drive(&rig)?;
    let (run, recorder, drain) = stop(rig)?;
    let tables = ["calls", "clients"].map(|t| recorder.dataset.join(t));
    let [calls, clients] = tables
        .each_ref()
        .map(|t| p11trace_dataset::layout::parquet_files(t).map_or(0, |f| f.len() as u64));
    let bytes = tables.iter().map(|t| parquet_bytes(t)).sum();
    let rows = parquet_rows(&tables[0]).context("counting the local rows")?;
    Ok(side(&run, (rows, (calls + clients, calls), bytes), drain))
}

fn uploaded(ctx: &Ctx, server: &S3Server, token: Token, workload: Workload) -> Result<Side> {
    let dir = tempfile::tempdir_in(&ctx.scratch)?;
    let spool = dir.path().join("spool");
    let socket = dir.path().join("sock").join("r.sock");
    let prefix = workload.name();
    let url = PathBuf::from(format!("s3://{BUCKET}/{prefix}"));
    let spool_arg = spool.to_str().context("the spool's path is not UTF-8")?;
    let mut launch = Launch::at(dir, url, socket).args(&["--spool", spool_arg, "--host", HOST]);
    for (key, value) in server.env() {
        launch = launch.env(&key, &value);
    }
    let rig = Rig::launch(ctx, token, launch)?;
    workload.drive(&rig)?;
    let (run, recorder, drain) = stop(rig)?;
    let objects = server.objects(BUCKET, &format!("{prefix}/"))?;
    let copy = recorder.dir.path().join("downloaded");
    server.download_dir(BUCKET, &format!("{prefix}/"), &copy)?;
    let rows = parquet_rows(&copy.join("calls")).context("counting the uploaded rows")?;
    let bytes = objects.iter().map(|o| o.size).sum();
    let calls = objects
        .iter()
        .filter(|o| o.key.starts_with(&format!("{prefix}/calls/")))
        .count() as u64;
    let files = (objects.len() as u64, calls);
    Ok(side(&run, (rows, files, bytes), drain))
}

/// The binaries under test are a debug build (beside a `debug` folder, or this bench is one).
fn debug_build(recorder: &Path) -> bool {
    cfg!(debug_assertions) || recorder.components().any(|c| c.as_os_str() == "debug")
}

fn measure_workload(ctx: &Ctx, server: &S3Server, workload: Workload) -> Result<Upload> {
    let token = || token_with_keys(Provider::SoftHsm);
    let local = local(ctx, token()?, workload)?;
    let upload = uploaded(ctx, server, token()?, workload)?;
    let cpu_local = local.per_million(local.recorder_cpu_secs);
    let cpu_upload = upload.per_million(upload.recorder_cpu_secs);
    Ok(Upload {
        workload,
        debug_build: debug_build(&ctx.bins.recorder),
        uploaded_bytes_per_million: upload.per_million(upload.bytes as f64),
        local_bytes_per_million: local.per_million(local.bytes as f64),
        objects_per_million: upload.per_million(upload.files as f64),
        cpu_secs_per_million_local: cpu_local,
        cpu_secs_per_million_upload: cpu_upload,
        cpu_ratio: cpu_upload / cpu_local,
        local,
        upload,
    })
}

fn lines(result: &Upload) -> Vec<Line> {
    let (local, upload) = (&result.local, &result.upload);
    let debug = if result.debug_build {
        " [debug build: CPU-seconds not representative, ratio only]"
    } else {
        ""
    };
    let off = result.uploaded_bytes_per_million / result.local_bytes_per_million - 1.0;
    vec![
        Line::target(
            BENCH,
            result.workload.label(),
            format!(
                "rows local {} · uploaded {} · dropped {} / {}",
                local.rows, upload.rows, local.dropped, upload.dropped
            ),
            "0 dropped, rows = records received",
            [local, upload]
                .iter()
                .all(|side| side.dropped == 0 && side.rows == side.records),
        ),
        Line::target(
            BENCH,
            "  bytes per M calls",
            format!(
                "uploaded {} ({:.1} B/call; {} objects, {} of calls, {:.1} per M; recorder uploaded={}) · local {} ({} files) · {:+.1}%",
                bytes(result.uploaded_bytes_per_million),
                result.uploaded_bytes_per_million / 1e6,
                upload.files,
                upload.calls_files,
                result.objects_per_million,
                upload.uploaded,
                bytes(result.local_bytes_per_million),
                local.files,
                off * 100.0
            ),
            format!(
                "within ±{:.0}%, objects = uploaded=",
                BYTES_TOLERANCE * 100.0
            ),
            off.abs() <= BYTES_TOLERANCE && upload.files == upload.uploaded,
        ),
        Line::info(
            BENCH,
            "  recorder CPU per M calls",
            format!(
                "local {:.2} s · upload {:.2} s · upload/local {:.2}{debug}",
                result.cpu_secs_per_million_local,
                result.cpu_secs_per_million_upload,
                result.cpu_ratio
            ),
        ),
        Line::info(
            BENCH,
            "  recorder peak RSS",
            format!(
                "local {} · upload {}",
                bytes(local.recorder_max_rss as f64),
                bytes(upload.recorder_max_rss as f64)
            ),
        ),
        Line::target(
            BENCH,
            "  SIGTERM → exit",
            format!(
                "local {:.2} s · upload {:.2} s (left_in_spool={})",
                local.drain_secs, upload.drain_secs, upload.left_in_spool
            ),
            "everything uploaded",
            upload.left_in_spool == 0 && upload.uploaded > 0,
        ),
    ]
}

pub fn run(ctx: &Ctx) -> Result<(Vec<Line>, serde_json::Value)> {
    let debug = debug_build(&ctx.bins.recorder);
    // A debug recorder keeps up with fewer calls/s: the rate is set so that nothing drops.
    let workloads = if ctx.quick {
        [
            Workload::SessionInfo {
                clients: 4,
                calls: 2_500,
                rate: 50_000.0,
            },
            Workload::SigningMix {
                clients: 1,
                rounds: 100,
            },
        ]
    } else {
        [
            Workload::SessionInfo {
                clients: 4,
                calls: 250_000,
                rate: if debug { 100_000.0 } else { 250_000.0 },
            },
            Workload::SigningMix {
                clients: 2,
                rounds: 6_700,
            },
        ]
    };
    let server = S3Server::start()?;
    server.create_bucket(BUCKET, false)?;
    let mut results = Vec::new();
    let mut found = Vec::new();
    for workload in workloads {
        let result = measure_workload(ctx, &server, workload).with_context(|| workload.label())?;
        ensure!(
            result.upload.rows > 0,
            "{}: nothing was uploaded",
            workload.name()
        );
        found.extend(lines(&result));
        results.push(result);
    }
    Ok((found, serde_json::to_value(&results)?))
}
