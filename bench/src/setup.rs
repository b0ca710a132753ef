//! What every benchmark stands on: the binaries under test, tokens with keys, the recorder
//! process, and the four ways a client reaches a token.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use p11trace_tests::{Provider, Token, USER_PIN};

use crate::client::{EC_LABEL, Op, RSA_LABEL};
use crate::measure::{self, Cost, Running};

/// The binaries under test: by default the ones built beside this executable (same profile).
#[derive(Debug, Clone)]
pub struct Bins {
    pub shim: PathBuf,
    pub recorder: PathBuf,
    pub query: PathBuf,
    /// This executable: its `client` subcommand is the benchmark client.
    pub client: PathBuf,
}

impl Bins {
    pub fn beside_me(shim: Option<PathBuf>) -> Result<Bins> {
        let client = std::env::current_exe().context("cannot find this executable")?;
        let dir = client.parent().context("executable has no folder")?;
        let bins = Bins {
            shim: shim.unwrap_or_else(|| dir.join("libp11trace_shim.so")),
            recorder: dir.join("p11trace-recorder"),
            query: dir.join("p11trace-query"),
            client: client.clone(),
        };
        for path in [&bins.shim, &bins.recorder] {
            if !path.exists() {
                bail!(
                    "{} is missing: build the workspace in this profile first (`just bench` does)",
                    path.display()
                );
            }
        }
        Ok(bins)
    }
}

/// A token (SoftHSM2 or Kryoptic) holding the bench keys: RSA-2048 and EC P-256.
pub fn token_with_keys(provider: Provider) -> Result<Token> {
    token_holding(
        provider,
        &[
            ("rsa:2048", RSA_LABEL, "01"),
            ("EC:prime256v1", EC_LABEL, "02"),
        ],
    )
}

/// A token holding key pairs (pkcs11-tool key type, label, id).
pub fn token_holding(provider: Provider, keys: &[(&str, &str, &str)]) -> Result<Token> {
    let token = Token::of(provider, "bench")?;
    let module = token.module();
    for &(key_type, label, id) in keys {
        let output = token
            .pkcs11_tool(
                &module,
                &[
                    "--login",
                    "--pin",
                    USER_PIN,
                    "--keypairgen",
                    "--key-type",
                    key_type,
                    "--label",
                    label,
                    "--id",
                    id,
                ],
            )
            .output()
            .context("cannot run pkcs11-tool")?;
        if !output.status.success() {
            bail!(
                "pkcs11-tool --keypairgen {key_type} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    token.snapshot()?;
    Ok(token)
}

/// A running `p11trace-recorder` with its own socket and dataset.
pub struct RecorderProcess {
    process: Option<Running>,
    pub socket: PathBuf,
    pub dataset: PathBuf,
    stderr: PathBuf,
}

/// What a stopped recorder reported and cost.
#[derive(Debug, Clone)]
pub struct RecorderRun {
    pub cost: Cost,
    /// Its final `stopped: …` line, as `key=value` pairs.
    pub summary: Vec<(String, u64)>,
}

impl RecorderRun {
    /// Calls that never became rows: dropped by the shims, refused by the recorder, or lost.
    pub fn undelivered(&self) -> u64 {
        self.get("dropped") + self.get("dropped_by_recorder") + self.get("lost")
    }

    pub fn get(&self, key: &str) -> u64 {
        self.summary
            .iter()
            .find(|(k, _)| k == key)
            .map_or(0, |(_, v)| *v)
    }
}

impl RecorderProcess {
    pub fn start(bins: &Bins, dir: &Path) -> Result<RecorderProcess> {
        let sockets = dir.join("sock");
        std::fs::create_dir_all(&sockets)?;
        std::fs::set_permissions(&sockets, std::fs::Permissions::from_mode(0o700))?;
        let socket = sockets.join("r.sock");
        let dataset = dir.join("dataset");
        let stderr = dir.join("recorder.log");
        let process = measure::start(
            Command::new(&bins.recorder)
                .arg("--dataset")
                .arg(&dataset)
                .arg("--socket")
                .arg(&socket),
            None,
            Some(&stderr),
        )?;
        measure::wait_for_text(&stderr, "listening on", Duration::from_secs(30))?;
        Ok(RecorderProcess {
            process: Some(process),
            socket,
            dataset,
            stderr,
        })
    }

    /// SIGTERM; waits for the drain and exit.
    pub fn stop(mut self) -> Result<RecorderRun> {
        let process = self.process.take().context("recorder already stopped")?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(process.pid(), libc::SIGTERM) };
        let cost = process.finish()?;
        let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let Some(line) = log.lines().rev().find(|line| line.contains("stopped:")) else {
            bail!("the recorder did not stop cleanly:\n{log}");
        };
        let summary = line
            .split_whitespace()
            .filter_map(|pair| pair.split_once('='))
            .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            .collect();
        Ok(RecorderRun { cost, summary })
    }
}

/// How a client reaches the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Route {
    /// The token's own module.
    Direct,
    /// OpenSC's pkcs11-spy.so in front of it, logging to a file.
    Spy,
    /// The shim in front of it, a recorder listening.
    Shim,
    /// The shim with no recorder: records are counted and dropped.
    ShimNoRecorder,
}

impl Route {
    pub const ALL: [Route; 4] = [
        Route::Direct,
        Route::Spy,
        Route::Shim,
        Route::ShimNoRecorder,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Spy => "pkcs11-spy",
            Route::Shim => "shim+recorder",
            Route::ShimNoRecorder => "shim, no recorder",
        }
    }
}

/// Where a route's side effects go.
pub struct RouteEnv<'a> {
    pub bins: &'a Bins,
    /// Socket of the running recorder (for [`Route::Shim`]).
    pub socket: &'a Path,
    /// Folder for the spy's log and the absent recorder's socket.
    pub scratch: &'a Path,
}

impl RouteEnv<'_> {
    pub fn spy_log(&self) -> PathBuf {
        self.scratch.join("spy.log")
    }

    /// A benchmark client on `token` through `route`, timing `ops`.
    pub fn client(&self, token: &Token, route: Route, ops: &[Op]) -> Command {
        let real = token.module();
        let mut command = token.command(&self.bins.client);
        let module: PathBuf = match route {
            Route::Direct => real.clone(),
            Route::Spy => {
                command
                    .env("PKCS11SPY", &real)
                    .env("PKCS11SPY_OUTPUT", self.spy_log());
                PathBuf::from(p11trace_tests::SPY)
            }
            Route::Shim | Route::ShimNoRecorder => {
                let socket = if route == Route::Shim {
                    self.socket.to_path_buf()
                } else {
                    self.scratch.join("nobody-listens.sock")
                };
                command
                    .env("P11TRACE_MODULE", &real)
                    .env("P11TRACE_SOCKET", socket);
                self.bins.shim.clone()
            }
        };
        let ops: Vec<String> = ops
            .iter()
            .map(|op| {
                clap::ValueEnum::to_possible_value(op)
                    .map(|v| v.get_name().to_owned())
                    .unwrap_or_default()
            })
            .collect();
        command
            .arg("client")
            .arg("--module")
            .arg(module)
            .args(["--label", &token.label, "--pin", USER_PIN])
            .arg("--ops")
            .arg(ops.join(","));
        command
    }
}

/// A token, a scratch folder and a recorder listening: what most benchmarks start from.
pub struct Rig {
    pub token: Token,
    pub dir: tempfile::TempDir,
    pub recorder: RecorderProcess,
    bins: Bins,
}

impl Rig {
    pub fn start(ctx: &crate::Ctx, token: Token) -> Result<Rig> {
        let dir = tempfile::tempdir_in(&ctx.scratch)?;
        let recorder = RecorderProcess::start(&ctx.bins, dir.path())?;
        Ok(Rig {
            token,
            dir,
            recorder,
            bins: ctx.bins.clone(),
        })
    }

    pub fn env(&self) -> RouteEnv<'_> {
        RouteEnv {
            bins: &self.bins,
            socket: &self.recorder.socket,
            scratch: self.dir.path(),
        }
    }

    /// Stops the recorder; the folder stays until the rig is dropped.
    pub fn stop(self) -> Result<(RecorderRun, tempfile::TempDir)> {
        let run = self.recorder.stop()?;
        Ok((run, self.dir))
    }
}
