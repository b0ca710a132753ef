//! What every benchmark stands on: the binaries under test, tokens with keys, the recorder
//! process, and the four ways a client reaches a token.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use p11trace_tests::{Cost, Launch, Provider, Recorder, Summary, Token, USER_PIN};

use crate::client::{EC_LABEL, Op, RSA_LABEL};

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
    token.add_key_pairs(keys)?;
    Ok(token)
}

/// What a stopped recorder reported and cost.
#[derive(Debug, Clone)]
pub struct RecorderRun {
    pub cost: Cost,
    /// Its final `stopped: …` line.
    pub summary: Summary,
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

/// A token and a recorder listening, in a scratch folder: what most benchmarks start from.
pub struct Rig {
    pub token: Token,
    /// Its folder (below the benchmarks' scratch folder) is the rig's: logs and outputs go there.
    pub recorder: Recorder,
    bins: Bins,
}

impl Rig {
    pub fn start(ctx: &crate::Ctx, token: Token) -> Result<Rig> {
        Rig::launch(
            ctx,
            token,
            Launch::in_dir(tempfile::tempdir_in(&ctx.scratch)?),
        )
    }

    /// [`Rig::start`] with a recorder launched as `launch` says (a store URL, more arguments);
    /// the bench's recorder binary and exit timeout are set here.
    pub fn launch(ctx: &crate::Ctx, token: Token, launch: Launch) -> Result<Rig> {
        let recorder = launch
            .bin(&ctx.bins.recorder)
            // Draining what a saturation run left queued may take a while.
            .exit_timeout(std::time::Duration::from_secs(600))
            .start()?;
        Ok(Rig {
            token,
            recorder,
            bins: ctx.bins.clone(),
        })
    }

    /// The scratch folder.
    pub fn dir(&self) -> &Path {
        self.recorder.dir.path()
    }

    pub fn env(&self) -> RouteEnv<'_> {
        RouteEnv {
            bins: &self.bins,
            socket: &self.recorder.socket,
            scratch: self.dir(),
        }
    }

    /// Stops the recorder (SIGTERM, the drain, the exit); its dataset and the scratch folder stay
    /// until the returned recorder is dropped.
    pub fn stop(mut self) -> Result<(RecorderRun, Recorder)> {
        let (_, stderr) = self.recorder.stop()?;
        let summary = self
            .recorder
            .summary()
            .with_context(|| format!("the recorder did not stop cleanly:\n{stderr}"))?;
        let cost = self.recorder.cost().context("the recorder's cost")?;
        Ok((RecorderRun { cost, summary }, self.recorder))
    }
}
