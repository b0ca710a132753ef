//! The fixture most end-to-end tests start from: a token, a recorder listening, and clients
//! traced through the shim into it — then the recorder stopped and its dataset read back.
//!
//! ```no_run
//! # use p11trace_tests::*;
//! # fn main() -> anyhow::Result<()> {
//! let mut traced = Traced::new("label")?;
//! run_ok(&mut traced.pkcs11_tool(&login(&["--test"])), std::time::Duration::from_secs(120))?;
//! traced.recorder.stop()?;
//! let rows = duckdb(&format!("SELECT count(*) AS n FROM {}", traced.recorder.table("calls")))?;
//! # Ok(()) }
//! ```

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::data::{Tally, tallies};
use crate::oracle::Oracle;
use crate::process::{run, run_ok, text};
use crate::recorder::{Recorder, shim_to};
use crate::token::{Provider, Token};
use crate::{login, shim};

/// A token and a recorder of its own, and commands traced through the shim between them.
pub struct Traced {
    pub token: Token,
    pub recorder: Recorder,
}

impl Traced {
    /// A fresh SoftHSM2 token labelled `label`, and a recorder.
    pub fn new(label: &str) -> Result<Traced> {
        Self::on(Provider::SoftHsm, label)
    }

    /// A fresh token of `provider` labelled `label`, and a recorder.
    pub fn on(provider: Provider, label: &str) -> Result<Traced> {
        let token = Token::of(provider, label)?;
        Ok(Traced {
            token,
            recorder: Recorder::start(&[])?,
        })
    }

    /// Sends `command`'s PKCS#11 calls through the shim to the token, recorded here.
    pub fn trace<'c>(&self, command: &'c mut Command) -> &'c mut Command {
        self.recorder.shim_env(command, self.token.module())
    }

    /// Puts `oracle` between the shim and the token, logging to `log`.
    pub fn behind<'c>(
        &self,
        command: &'c mut Command,
        oracle: Oracle,
        log: &Path,
    ) -> &'c mut Command {
        self.recorder.shim_env(command, oracle.module());
        oracle.env(command, &self.token.module(), log)
    }

    /// `pkcs11-tool --module <shim> --token-label <label> <args>`, traced.
    pub fn pkcs11_tool(&self, args: &[&str]) -> Command {
        let mut command = self.token.pkcs11_tool(&shim(), args);
        self.trace(&mut command);
        command
    }

    /// `p11client <shim> <args>`, traced.
    pub fn client(&self, args: &[&str]) -> Command {
        let mut command = self.token.client(&shim(), args);
        self.trace(&mut command);
        command
    }

    /// `p11tool --provider <shim> <args>`, traced.
    pub fn p11tool<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut command = self.token.command("p11tool");
        command.arg("--provider").arg(shim()).args(args);
        self.trace(&mut command);
        command
    }

    /// An ECDSA signature of 32 bytes with the key of `id`, traced (`pkcs11-tool --sign`), which
    /// must succeed; the signature's bytes.
    pub fn sign_ecdsa(&self, id: &str, timeout: Duration) -> Result<Vec<u8>> {
        let dir = crate::temp();
        let message = dir.path().join("message");
        std::fs::write(&message, [7u8; 32])?;
        let signature = dir.path().join("signature");
        run_ok(
            self.pkcs11_tool(&login(&["--sign", "--id", id, "-m", "ECDSA"]))
                .arg("--input-file")
                .arg(&message)
                .arg("--output-file")
                .arg(&signature),
            timeout,
        )?;
        Ok(std::fs::read(&signature)?)
    }

    /// `pkcs11-tool --login --pin <user PIN> --test`, traced, which must succeed; then the
    /// recorder is stopped.
    pub fn pkcs11_tool_test(label: &str) -> Result<Traced> {
        let mut traced = Traced::new(label)?;
        run_ok(
            &mut traced.pkcs11_tool(&login(&["--test"])),
            Duration::from_secs(120),
        )?;
        traced.recorder.stop()?;
        Ok(traced)
    }

    /// Runs `p11client <args>` traced, with `env` added, then stops the recorder.
    pub fn run_client(
        mut self,
        args: &[&str],
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<ClientRun> {
        let mut command = self.client(args);
        command.envs(env.iter().copied());
        let started = Instant::now();
        let output = run(&mut command, timeout)?;
        let reports = client_reports(&output)?;
        let elapsed = started.elapsed();
        self.recorder.stop()?;
        let pid = reports
            .first()
            .and_then(|r| r["pid"].as_i64())
            .context("pid")?;
        let tally = tallies(&self.recorder.dataset)?
            .get(&pid)
            .copied()
            .unwrap_or_default();
        Ok(ClientRun {
            traced: self,
            output,
            reports,
            elapsed,
            pid,
            tally,
        })
    }
}

/// One `p11client` run through the shim with a recorder of its own, stopped once the client is
/// done; its dataset stays to be queried.
pub struct ClientRun {
    pub traced: Traced,
    pub output: Output,
    /// The client's JSON lines: one, or one per process (`fork`).
    pub reports: Vec<Value>,
    /// How long the client ran.
    pub elapsed: Duration,
    /// The first line's process, and what the dataset holds for it.
    pub pid: i64,
    pub tally: Tally,
}

impl ClientRun {
    /// The first line of the client's report.
    pub fn report(&self) -> &Value {
        &self.reports[0]
    }

    /// The calls the client says it made.
    pub fn calls(&self) -> i64 {
        self.report()["calls"].as_i64().unwrap_or(-1)
    }

    pub fn recorder(&self) -> &Recorder {
        &self.traced.recorder
    }
}

/// The JSON lines `p11client` printed; fails unless it exited 0.
pub fn client_reports(output: &Output) -> Result<Vec<Value>> {
    ensure!(
        output.status.success(),
        "p11client failed: {}",
        text(&output.stderr)
    );
    text(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

/// The stderr lines the shim wrote (`p11trace: …`).
pub fn shim_lines(stderr: &[u8]) -> Vec<String> {
    text(stderr)
        .lines()
        .filter(|l| l.starts_with("p11trace:"))
        .map(String::from)
        .collect()
}

/// Starts `p11client <args>` through the shim to a SoftHSM2 `token`, reporting to `socket`
/// (where a recorder may or may not listen yet), its output piped for [`report`].
pub fn spawn_client(token: &Token, socket: &Path, args: &[&str]) -> Result<Child> {
    let mut command = token.client(&shim(), args);
    shim_to(&mut command, token.module(), socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Ok(command.spawn()?)
}

/// Starts `count` clients as [`spawn_client`] does, all alike.
pub fn spawn_clients(
    token: &Token,
    socket: &Path,
    count: usize,
    args: &[&str],
) -> Result<Vec<Child>> {
    (0..count)
        .map(|_| spawn_client(token, socket, args))
        .collect()
}

/// The `rogue` test peer (`tests/src/bin/rogue.rs`) against `socket`: `kind` and its arguments.
pub fn rogue(socket: &Path, kind: &[&str]) -> Command {
    let mut command = Command::new(crate::target_dir().join("rogue"));
    command.arg(socket).args(kind);
    command
}

/// A rogue started in the background, its output discarded.
pub fn spawn_rogue(socket: &Path, kind: &[&str]) -> Result<Child> {
    Ok(rogue(socket, kind)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

/// Runs a rogue to its end (at most 30 s); fails unless it exited 0.
pub fn run_rogue(socket: &Path, kind: &[&str]) -> Result<()> {
    let output = run(&mut rogue(socket, kind), Duration::from_secs(30))?;
    ensure!(
        output.status.success(),
        "rogue {kind:?}: {}",
        text(&output.stderr)
    );
    Ok(())
}

/// Waits for a client and returns its (last) JSON report line.
pub fn report(child: Child) -> Result<Value> {
    client_reports(&child.wait_with_output()?)?
        .pop()
        .context("no report")
}
