//! The real recorder process, on its own socket and dataset: started, signalled, stopped, and
//! measured (its exit is reaped with `wait4(2)`, so peak RSS and CPU time are exact).

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::data::table;
use crate::process::{Cost, reap};
use crate::{recorder_bin, temp};

/// Makes `command` load the shim's configuration from its environment: forward to `module`,
/// report to the recorder at `socket`.
pub fn shim_to<'c>(
    command: &'c mut Command,
    module: impl AsRef<OsStr>,
    socket: &Path,
) -> &'c mut Command {
    command
        .env("P11TRACE_MODULE", module.as_ref())
        .env("P11TRACE_SOCKET", socket)
}

/// How to start a recorder: its binary, folder, dataset, socket, arguments and environment.
pub struct Launch {
    bin: PathBuf,
    dir: tempfile::TempDir,
    dataset: PathBuf,
    socket: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    exit_timeout: Duration,
}

impl Launch {
    /// In `dir`: the dataset at `dir/ds`, the socket at `dir/sock/r.sock` (the recorder creates
    /// the missing folder, private).
    pub fn in_dir(dir: tempfile::TempDir) -> Launch {
        let dataset = dir.path().join("ds");
        let socket = dir.path().join("sock").join("r.sock");
        Launch::at(dir, dataset, socket)
    }

    /// On a given dataset and socket (a restart on the same ones); `dir` stays with the recorder.
    pub fn at(dir: tempfile::TempDir, dataset: PathBuf, socket: PathBuf) -> Launch {
        Launch {
            bin: recorder_bin(),
            dir,
            dataset,
            socket,
            args: Vec::new(),
            env: Vec::new(),
            exit_timeout: Duration::from_secs(60),
        }
    }

    /// Another recorder binary (the benchmarks' profile).
    pub fn bin(mut self, bin: &Path) -> Launch {
        self.bin = bin.to_owned();
        self
    }

    /// More command-line arguments.
    pub fn args(mut self, args: &[&str]) -> Launch {
        self.args.extend(args.iter().map(OsString::from));
        self
    }

    /// An environment variable for the recorder process alone.
    pub fn env(mut self, key: &str, value: &str) -> Launch {
        self.env.push((key.into(), value.into()));
        self
    }

    /// How long [`Recorder::stop`] and [`Recorder::wait`] wait for the exit (60 s unless set).
    pub fn exit_timeout(mut self, timeout: Duration) -> Launch {
        self.exit_timeout = timeout;
        self
    }

    /// Starts it and waits until it listens.
    pub fn start(self) -> Result<Recorder> {
        let started = Instant::now();
        let mut child = Command::new(&self.bin)
            .arg("--dataset")
            .arg(&self.dataset)
            .arg("--socket")
            .arg(&self.socket)
            .args(&self.args)
            .envs(self.env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (run `just build` first)",
                    self.bin.display()
                )
            })?;
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut recorder = Recorder {
            child: Some(child),
            started,
            exit_timeout: self.exit_timeout,
            cost: None,
            dir: self.dir,
            socket: self.socket,
            dataset: self.dataset,
            stderr: rx,
            stderr_lines: Vec::new(),
        };
        recorder.wait_for("listening on", Duration::from_secs(30))?;
        Ok(recorder)
    }
}

/// The real recorder process, on its own socket and dataset.
pub struct Recorder {
    child: Option<Child>,
    started: Instant,
    exit_timeout: Duration,
    cost: Option<Cost>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub dataset: PathBuf,
    stderr: mpsc::Receiver<String>,
    pub stderr_lines: Vec<String>,
}

impl Recorder {
    /// A recorder in a fresh folder, with `extra` arguments.
    pub fn start(extra: &[&str]) -> Result<Recorder> {
        Launch::in_dir(temp()).args(extra).start()
    }

    /// Starts a recorder on an existing dataset and socket (restarts).
    pub fn start_at(
        dir: tempfile::TempDir,
        dataset: PathBuf,
        socket: PathBuf,
        extra: &[&str],
    ) -> Result<Recorder> {
        Launch::at(dir, dataset, socket).args(extra).start()
    }

    /// Waits until a stderr line contains `needle`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.stderr_lines.push(line.clone());
                    if line.contains(needle) {
                        return Ok(line);
                    }
                }
                Err(_) => bail!(
                    "recorder never printed `{needle}`; stderr so far:\n{}",
                    self.stderr_lines.join("\n")
                ),
            }
        }
    }

    /// Environment for a traced process: the shim forwards to `module` and reports here.
    pub fn shim_env<'c>(
        &self,
        command: &'c mut Command,
        module: impl AsRef<OsStr>,
    ) -> &'c mut Command {
        shim_to(command, module, &self.socket)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends `signal` to the recorder (nothing once it has exited).
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// SIGTERM, then waits for the exit; returns its status and the whole stderr.
    pub fn stop(&mut self) -> Result<(ExitStatus, String)> {
        self.signal(libc::SIGTERM);
        self.wait()
    }

    /// Waits for the recorder to exit on its own.
    pub fn wait(&mut self) -> Result<(ExitStatus, String)> {
        let mut child = self.child.take().context("recorder already stopped")?;
        let deadline = Instant::now() + self.exit_timeout;
        let (status, cost) = loop {
            // Reaped here, not by `child`: wait4 also reports what the process cost.
            if let Some(done) = reap(child.id() as libc::pid_t, self.started, false)? {
                break done;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.stderr_lines.extend(self.stderr.try_iter());
                bail!(
                    "recorder did not exit within {:?}; stderr so far:\n{}",
                    self.exit_timeout,
                    self.stderr_lines.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        self.cost = Some(cost);
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(500)) {
            self.stderr_lines.push(line);
        }
        Ok((status, self.stderr_lines.join("\n")))
    }

    /// What the recorder cost, once it has exited ([`Recorder::stop`], [`Recorder::wait`]).
    pub fn cost(&self) -> Option<Cost> {
        self.cost
    }

    /// Its final `stopped: …` line, once it has exited cleanly.
    pub fn summary(&self) -> Option<Summary> {
        Summary::parse(&self.stderr_lines.join("\n"))
    }

    /// kill -9.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Hands over the folders (for a restart on the same dataset).
    pub fn into_parts(mut self) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = std::mem::replace(&mut self.dir, temp());
        (dir, self.dataset.clone(), self.socket.clone())
    }

    /// `read_parquet` glob of a table of the dataset.
    pub fn table(&self, table_name: &str) -> String {
        table(&self.dataset, table_name)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The recorder's final `stopped: key=value …` line.
#[derive(Debug, Clone)]
pub struct Summary(Vec<(String, u64)>);

impl Summary {
    /// The last `stopped:` line of a recorder's stderr.
    pub fn parse(stderr: &str) -> Option<Summary> {
        let line = stderr
            .lines()
            .rev()
            .find(|line| line.contains("stopped:"))?;
        Some(Summary(
            line.split_whitespace()
                .filter_map(|pair| pair.split_once('='))
                .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
                .collect(),
        ))
    }

    /// A counter of the line (0 when absent).
    pub fn get(&self, key: &str) -> u64 {
        self.0.iter().find(|(k, _)| k == key).map_or(0, |(_, v)| *v)
    }

    /// Calls that never became rows: dropped by the shims, refused by the recorder, or lost.
    pub fn undelivered(&self) -> u64 {
        self.get("dropped") + self.get("dropped_by_recorder") + self.get("lost")
    }
}
