//! # p11trace-tests
//!
//! Fixtures for the end-to-end tests in `tests/tests/`: a SoftHSM2 token restored from a
//! snapshot, the real recorder process, real clients (`pkcs11-tool`, `p11tool`), the real
//! `pkcs11-spy.so`, and the real DuckDB CLI. Nothing here is a mock.
//!
//! The binaries under test are found in the cargo target folder (`just test` builds them first).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub const SO_PIN: &str = "So-Pin-4417";
pub const USER_PIN: &str = "User-Pin-8812";
pub const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const SPY: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so";

/// The cargo target folder holding the binaries under test: the one the running executable was
/// built into (tests run from `target/<profile>/deps/`, the bench from `target/<profile>/`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().ok();
    let built_beside = exe.as_deref().and_then(|exe| {
        exe.ancestors()
            .skip(1)
            .take(3)
            .find(|dir| dir.join("p11trace-recorder").exists())
    });
    match (built_beside, std::env::var_os("CARGO_TARGET_DIR")) {
        (Some(dir), _) => dir.to_path_buf(),
        (None, Some(dir)) => PathBuf::from(dir).join("debug"),
        (None, None) => PathBuf::from("target/debug"),
    }
}

pub fn shim() -> PathBuf {
    target_dir().join("libp11trace_shim.so")
}

pub fn recorder_bin() -> PathBuf {
    target_dir().join("p11trace-recorder")
}

pub fn query_bin() -> PathBuf {
    target_dir().join("p11trace-query")
}

/// The workspace root (for `../shared` and `schemas/`).
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `../shared`, beside the checkout.
pub fn shared() -> PathBuf {
    workspace().join("../shared")
}

/// A short-path temporary folder (Unix socket paths must stay under 108 bytes).
pub fn temp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("p11t-")
        .tempdir_in("/tmp")
        .expect("temporary folder")
}

/// Runs a command to completion, with a timeout.
pub fn run(command: &mut Command, timeout: Duration) -> Result<Output> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {command:?}"))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_thread = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        let _ = stdout.read_to_end(&mut buffer);
        buffer
    });
    let err_thread = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        let _ = stderr.read_to_end(&mut buffer);
        buffer
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {timeout:?}: {command:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(Output {
        status,
        stdout: out_thread.join().unwrap_or_default(),
        stderr: err_thread.join().unwrap_or_default(),
    })
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Output with long hex runs and UUIDs (key material, random output, object unique ids: different
/// every run) masked.
pub fn normalized(output: &[u8]) -> String {
    let text = text(output);
    let mut out = String::new();
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        let digits = run.chars().filter(char::is_ascii_hexdigit).count();
        out.push_str(if digits >= 16 { "<hex>" } else { run.as_str() });
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_hexdigit() || (c == '-' && !run.is_empty()) {
            run.push(c);
            continue;
        }
        flush(&mut run, &mut out);
        out.push(c);
    }
    flush(&mut run, &mut out);
    out
}

/// What a client run produced: exit code, normalized stdout and stderr, and an output file.
pub type RunResult = (Option<i32>, String, String, Option<Vec<u8>>);

/// Runs `command` and keeps what must be equal between a direct and a traced run.
pub fn outcome(command: &mut Command, file: Option<&Path>) -> Result<RunResult> {
    let output = run(command, Duration::from_secs(180))?;
    Ok((
        output.status.code(),
        normalized(&output.stdout),
        normalized(&output.stderr),
        file.and_then(|f| std::fs::read(f).ok()),
    ))
}

/// Kryoptic, the PKCS#11 3.2 token (`just kryoptic` builds it into the target folder).
pub fn kryoptic() -> PathBuf {
    let path = target_dir()
        .parent()
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
        .join("kryoptic/libkryoptic_pkcs11.so");
    assert!(
        path.exists(),
        "{} is missing: run `just kryoptic` (scripts/build-kryoptic.sh)",
        path.display()
    );
    path
}

/// Which token implementation a [`Token`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    SoftHsm,
    Kryoptic,
}

/// A token in its own folder (SoftHSM2 or Kryoptic), with a snapshot to restore before each run.
pub struct Token {
    pub dir: tempfile::TempDir,
    pub label: String,
    pub provider: Provider,
}

impl Token {
    /// An initialised SoftHSM2 token (distinctive SO and user PINs), snapshotted.
    pub fn new(label: &str) -> Result<Token> {
        Self::of(Provider::SoftHsm, label)
    }

    /// An initialised token of `provider`, snapshotted.
    pub fn of(provider: Provider, label: &str) -> Result<Token> {
        let dir = temp();
        std::fs::create_dir_all(dir.path().join("tokens"))?;
        let token = Token {
            dir,
            label: label.to_owned(),
            provider,
        };
        match provider {
            Provider::SoftHsm => {
                std::fs::write(
                    token.conf(),
                    format!(
                        "directories.tokendir = {}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n",
                        token.dir.path().display()
                    ),
                )?;
                let output = run(
                    token.command("softhsm2-util").args([
                        "--init-token",
                        "--free",
                        "--label",
                        label,
                        "--so-pin",
                        SO_PIN,
                        "--pin",
                        USER_PIN,
                    ]),
                    Duration::from_secs(30),
                )?;
                if !output.status.success() {
                    bail!("softhsm2-util failed: {}", text(&output.stderr));
                }
            }
            Provider::Kryoptic => {
                std::fs::write(
                    token.conf(),
                    format!(
                        "[[slots]]\nslot = 42\ndbtype = \"sqlite\"\ndbargs = \"{}/tokens/token.sql\"\n",
                        token.dir.path().display()
                    ),
                )?;
                let module = kryoptic();
                let mut init = token.command("pkcs11-tool");
                init.arg("--module").arg(&module).args([
                    "--init-token",
                    "--label",
                    label,
                    "--so-pin",
                    SO_PIN,
                ]);
                let mut pin = token.command("pkcs11-tool");
                pin.arg("--module").arg(&module).args([
                    "--token-label",
                    label,
                    "--login",
                    "--login-type",
                    "so",
                    "--so-pin",
                    SO_PIN,
                    "--init-pin",
                    "--new-pin",
                    USER_PIN,
                ]);
                for command in [&mut init, &mut pin] {
                    let output = run(command, Duration::from_secs(60))?;
                    if !output.status.success() {
                        bail!(
                            "initialising the Kryoptic token failed: {}",
                            text(&output.stderr)
                        );
                    }
                }
            }
        }
        token.snapshot()?;
        Ok(token)
    }

    /// The real module of this token.
    pub fn module(&self) -> PathBuf {
        match self.provider {
            Provider::SoftHsm => PathBuf::from(SOFTHSM),
            Provider::Kryoptic => kryoptic(),
        }
    }

    pub fn conf(&self) -> PathBuf {
        match self.provider {
            Provider::SoftHsm => self.dir.path().join("softhsm2.conf"),
            Provider::Kryoptic => self.dir.path().join("kryoptic.toml"),
        }
    }

    /// A command with this token's configuration in its environment.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        match self.provider {
            Provider::SoftHsm => command.env("SOFTHSM2_CONF", self.conf()),
            Provider::Kryoptic => command.env("KRYOPTIC_CONF", self.conf()),
        };
        command
    }

    /// Saves the token's current state as the snapshot.
    pub fn snapshot(&self) -> Result<()> {
        copy_tree(
            &self.dir.path().join("tokens"),
            &self.dir.path().join("snapshot"),
        )
    }

    /// Puts the token back exactly as snapshotted.
    pub fn restore(&self) -> Result<()> {
        copy_tree(
            &self.dir.path().join("snapshot"),
            &self.dir.path().join("tokens"),
        )
    }

    /// `pkcs11-tool --module <module> --token-label <label> <args>`.
    pub fn pkcs11_tool(&self, module: &Path, args: &[&str]) -> Command {
        let mut command = self.command("pkcs11-tool");
        command
            .arg("--module")
            .arg(module)
            .args(["--token-label", &self.label])
            .args(args);
        command
    }

    /// `p11client <module> <args>` (the test client in this crate).
    pub fn client(&self, module: &Path, args: &[&str]) -> Command {
        let mut command = self.command(target_dir().join("p11client"));
        command.arg(module).args(args);
        command
    }
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to)?;
    }
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// The real recorder process, on its own socket and dataset.
pub struct Recorder {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub dataset: PathBuf,
    stderr: mpsc::Receiver<String>,
    pub stderr_lines: Vec<String>,
}

impl Recorder {
    pub fn start(extra: &[&str]) -> Result<Recorder> {
        let dir = temp();
        let dataset = dir.path().join("ds");
        let socket = dir.path().join("sock").join("r.sock");
        Self::start_at(dir, dataset, socket, extra)
    }

    /// Starts a recorder on an existing dataset and socket (restarts).
    pub fn start_at(
        dir: tempfile::TempDir,
        dataset: PathBuf,
        socket: PathBuf,
        extra: &[&str],
    ) -> Result<Recorder> {
        let mut child = Command::new(recorder_bin())
            .arg("--dataset")
            .arg(&dataset)
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start p11trace-recorder (run `just build` first)")?;
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
            dir,
            socket,
            dataset,
            stderr: rx,
            stderr_lines: Vec::new(),
        };
        recorder.wait_for("listening on", Duration::from_secs(30))?;
        Ok(recorder)
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
    pub fn shim_env(&self, command: &mut Command, module: &str) {
        command
            .env("P11TRACE_MODULE", module)
            .env("P11TRACE_SOCKET", &self.socket);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends `signal` to the recorder.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid() as i32, signal) };
    }

    /// SIGTERM, then waits for the exit; returns its status and the whole stderr.
    pub fn stop(&mut self) -> Result<(ExitStatus, String)> {
        self.signal(libc::SIGTERM);
        self.wait()
    }

    /// Waits for the recorder to exit on its own.
    pub fn wait(&mut self) -> Result<(ExitStatus, String)> {
        let mut child = self.child.take().context("recorder already stopped")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("recorder did not exit within 60 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(500)) {
            self.stderr_lines.push(line);
        }
        Ok((status, self.stderr_lines.join("\n")))
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
    pub fn table(&self, table: &str) -> String {
        format!(
            "read_parquet('{}/{table}/**/*.parquet', hive_partitioning=true)",
            self.dataset.display()
        )
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

/// Runs SQL in the real DuckDB CLI; rows as JSON objects.
pub fn duckdb(sql: &str) -> Result<Vec<serde_json::Value>> {
    let output = run(
        Command::new("duckdb").args(["-json", "-c", sql]),
        Duration::from_secs(120),
    )?;
    if !output.status.success() {
        bail!("duckdb failed on `{sql}`: {}", text(&output.stderr));
    }
    let stdout = text(&output.stdout);
    if stdout.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&stdout).with_context(|| format!("duckdb output is not JSON: {stdout}"))
}

/// Runs `p11trace-query` with arguments; fails unless it exits 0.
pub fn query(args: &[&str]) -> Result<Output> {
    let output = run(
        Command::new(query_bin()).args(args),
        Duration::from_secs(300),
    )?;
    if !output.status.success() {
        bail!("p11trace-query {args:?} failed: {}", text(&output.stderr));
    }
    Ok(output)
}

/// Every file below `dir` (hidden ones included), for secret scans.
pub fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// The bytes of every hex-dump line in `text` (`    %08X  HH HH …`), concatenated: how
/// pkcs11-spy prints buffers, 16 bytes a line.
fn dumped_bytes(text: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("    ") else {
            continue;
        };
        if rest.len() < 10
            || !rest[..8].bytes().all(|b| b.is_ascii_hexdigit())
            || &rest[8..10] != "  "
        {
            continue;
        }
        for pair in rest[10..].split(' ').take_while(|p| p.len() == 2) {
            match u8::from_str_radix(pair, 16) {
                Ok(byte) => bytes.push(byte),
                Err(_) => break,
            }
        }
    }
    bytes
}

/// Whether `haystack` contains `needle` as raw bytes, hex (either case, also as hex-dump lines)
/// or base64.
pub fn contains_secret(haystack: &[u8], needle: &[u8]) -> bool {
    let found = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    let raw = found(haystack) || found(&dumped_bytes(&String::from_utf8_lossy(haystack)));
    let hex_lower: String = needle.iter().map(|b| format!("{b:02x}")).collect();
    let hay_lower = String::from_utf8_lossy(haystack).to_lowercase();
    let base64 = base64_variants(needle);
    raw || hay_lower.contains(&hex_lower)
        || base64
            .iter()
            .any(|b| String::from_utf8_lossy(haystack).contains(b.as_str()))
}

/// Base64 of `needle` at each of the three alignments it can have in encoded data: the whole
/// 3-byte groups of `needle[k..]` encode the same wherever the needle sits, for one k in 0..3.
fn base64_variants(needle: &[u8]) -> Vec<String> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..3)
        .filter_map(|k| {
            let rest = needle.get(k..)?;
            let whole = &rest[..rest.len() / 3 * 3];
            if whole.is_empty() {
                return None;
            }
            let mut out = String::new();
            for group in whole.chunks(3) {
                let n =
                    (u32::from(group[0]) << 16) | (u32::from(group[1]) << 8) | u32::from(group[2]);
                for i in 0..4 {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                }
            }
            Some(out)
        })
        .collect()
}

/// pkcs11-spy log lines of `(func, rv_name)` in order, one per record (single-threaded logs).
pub fn spy_sequence(log: &str) -> Vec<(String, String)> {
    let mut sequence = Vec::new();
    let mut current: Option<String> = None;
    for line in log.lines() {
        if let Some((number, name)) = line.split_once(": ")
            && number.chars().all(|c| c.is_ascii_digit())
            && !number.is_empty()
        {
            current = Some(name.trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("Returned:  ") {
            let name = rest.split_whitespace().nth(1).unwrap_or("").to_owned();
            if let Some(func) = current.take() {
                sequence.push((func, name));
            }
        }
    }
    sequence
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scanner_finds_raw_hex_and_base64_at_every_alignment() {
        let secret = b"User-Pin-8812";
        for prefix in ["", "x", "xy"] {
            let mut data = prefix.as_bytes().to_vec();
            data.extend_from_slice(secret);
            data.extend_from_slice(b"tail");
            let encoded = {
                const A: &[u8; 64] =
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
                let mut out = String::new();
                for chunk in data.chunks(3) {
                    let b = [
                        chunk[0],
                        *chunk.get(1).unwrap_or(&0),
                        *chunk.get(2).unwrap_or(&0),
                    ];
                    let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
                    for i in 0..=chunk.len() {
                        out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                    }
                }
                out
            };
            assert!(
                contains_secret(encoded.as_bytes(), secret),
                "base64 with prefix {prefix:?}"
            );
        }
        assert!(contains_secret(b"..55736572..", b"User"));
        assert!(contains_secret(b"..User-Pin-8812..", secret));
        assert!(!contains_secret(b"nothing to see", secret));
    }
}
