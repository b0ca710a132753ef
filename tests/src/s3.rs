//! A real S3-compatible server for the tests: `moto_server` (PyPI `moto[server]`, pinned in
//! `.ci/run`) on a free loopback port, its buckets in memory, stopped when dropped. Bucket and
//! object operations go through boto3 (`tests/scripts/s3.py`), not through the code under test.
//!
//! ```no_run
//! # use p11trace_tests::s3::S3Server;
//! # fn main() -> anyhow::Result<()> {
//! let server = S3Server::start()?;
//! server.create_bucket("fleet", true)?;
//! // a recorder or an engine pointed at it: `Command::envs(server.env())`
//! server.pause()?; // SIGSTOP: connections are accepted by the kernel, never answered
//! server.resume()?;
//! let files = server.objects("fleet", "calls/")?;
//! # Ok(()) }
//! ```

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;

use crate::process::{run, text};

/// How long [`S3Server::start`] waits for the server to answer.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one boto3 operation (`tests/scripts/s3.py`) may take.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);
/// The dummy credentials the server accepts (moto checks none).
const ACCESS_KEY: &str = "p11trace-test";
const SECRET_KEY: &str = "p11trace-test-secret";
pub const REGION: &str = "us-east-1";

/// One object of a bucket (`list_objects_v2`); the ETag without its quotes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Object {
    pub key: String,
    pub size: u64,
    pub etag: String,
}

/// One version of an object of a versioned bucket (`list_object_versions`, delete markers
/// left out); the ETag without its quotes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Version {
    pub key: String,
    pub version_id: String,
    pub etag: String,
    pub size: u64,
}

/// A running `moto_server`; killed (and reaped) when dropped, paused or not.
pub struct S3Server {
    child: Child,
    addr: SocketAddr,
    /// The server's output (`moto.log`), in a private folder removed with the server.
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl S3Server {
    /// `moto_server -H 127.0.0.1 -p <free port>`, once it answers HTTP (at most 20 s; the
    /// error holds its output). A port taken between choosing and binding is tried again.
    pub fn start() -> Result<S3Server> {
        let mut last = None;
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            match Self::start_on(port) {
                Ok(server) => return Ok(server),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("moto_server did not start")))
    }

    /// `moto_server` on a given loopback port (one a client was already told about).
    pub fn start_on(port: u16) -> Result<S3Server> {
        let dir = crate::temp();
        let log = std::fs::File::create(dir.path().join("moto.log"))?;
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            // S3 refuses multipart parts under 5 MiB but the last; a test's files are KiBs. A
            // 1 KiB minimum lets the tests upload real multipart uploads of small files.
            .env("S3_UPLOAD_PART_MIN_SIZE", "1024")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| match e.kind() {
                ErrorKind::NotFound => anyhow::anyhow!(
                    "moto_server is not on PATH: pip install 'moto[server]==5.2.5' (.ci/run and `just deps` do)"
                ),
                _ => anyhow::Error::new(e).context("cannot start moto_server"),
            })?;
        let mut server = S3Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("moto_server exited ({status}): {}", server.log());
            }
            if server.answers(Duration::from_millis(500)).is_ok() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!(
                    "moto_server did not answer on {} within {START_TIMEOUT:?}: {}",
                    server.endpoint,
                    server.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What the server printed so far (its request log and errors).
    pub fn log(&self) -> String {
        std::fs::read(self.dir.path().join("moto.log"))
            .map(|bytes| text(&bytes))
            .unwrap_or_default()
    }

    /// Whether the server answers a plain HTTP request (`GET /`) within `timeout`: Ok with
    /// its status line, or the error (a paused server times out).
    pub fn answers(&self, timeout: Duration) -> Result<String> {
        let mut stream = TcpStream::connect_timeout(&self.addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
        let mut head = [0u8; 64];
        let read = stream.read(&mut head).context("no answer")?;
        let status = text(&head[..read]);
        let line = status.lines().next().unwrap_or_default().to_owned();
        ensure!(
            line.starts_with("HTTP/1."),
            "not an HTTP answer: {status:?}"
        );
        Ok(line)
    }

    /// The environment a client of this server needs: dummy credentials, the region, the
    /// endpoint, and `AWS_ALLOW_HTTP` (object_store refuses plain http without it).
    pub fn env(&self) -> Vec<(String, String)> {
        Self::env_at(&self.endpoint)
    }

    /// [`S3Server::env`] for a server at `endpoint` that may not be running (yet).
    pub fn env_at(endpoint: &str) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_REGION", REGION),
            ("AWS_ENDPOINT_URL", endpoint),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// SIGSTOP: the server stops answering (connections hang) until [`S3Server::resume`].
    pub fn pause(&self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// SIGCONT: the server answers again, its buckets as they were.
    pub fn resume(&self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    fn signal(&self, signal: libc::c_int) -> Result<()> {
        let pid = libc::pid_t::try_from(self.child.id())?;
        // SAFETY: kill(2) on our own child's pid, which is not reaped before drop.
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!(
                "signal {signal} to moto_server: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// Creates `bucket`; `versioned` turns versioning on (every overwrite keeps a version).
    pub fn create_bucket(&self, bucket: &str, versioned: bool) -> Result<()> {
        let mut args = vec!["create-bucket", bucket];
        if versioned {
            args.push("versioned");
        }
        self.boto3(&args).map(drop)
    }

    /// The objects of `bucket` under `prefix` (every page), by key.
    pub fn objects(&self, bucket: &str, prefix: &str) -> Result<Vec<Object>> {
        let out = self.boto3(&["objects", bucket, prefix])?;
        serde_json::from_str(&out).with_context(|| format!("s3.py objects: {out}"))
    }

    /// Every version of every object of `bucket` under `prefix` (a versioned bucket; an
    /// unversioned one lists each object once, version `null`).
    pub fn versions(&self, bucket: &str, prefix: &str) -> Result<Vec<Version>> {
        let out = self.boto3(&["versions", bucket, prefix])?;
        serde_json::from_str(&out).with_context(|| format!("s3.py versions: {out}"))
    }

    /// Uploads every file below `folder` to `bucket` as `prefix` + its relative path (`/`
    /// separated; `prefix` is used as given, so end it with `/`), leaving out hidden files and
    /// folders (`.key`, `.lock`, `.wal/`) and files being written (`*.tmp`, `*.wal`).
    pub fn upload_dir(&self, folder: &Path, bucket: &str, prefix: &str) -> Result<()> {
        let mut pairs = Vec::new();
        for file in files_below(folder)? {
            let relative = file.strip_prefix(folder)?;
            let key = relative
                .components()
                .map(|c| c.as_os_str().to_str().context("a file name not UTF-8"))
                .collect::<Result<Vec<_>>>()?
                .join("/");
            pairs.push(file.to_str().context("a path not UTF-8")?.to_owned());
            pairs.push(format!("{prefix}{key}"));
        }
        ensure!(
            !pairs.is_empty(),
            "no file to upload in {}",
            folder.display()
        );
        let mut args = vec!["upload", bucket];
        args.extend(pairs.iter().map(String::as_str));
        self.boto3(&args).map(drop)
    }

    /// Downloads every object of `bucket` under `prefix` (used as given: end it with `/`) into
    /// `folder`, keys less the prefix as relative paths; the relative names written.
    pub fn download_dir(&self, bucket: &str, prefix: &str, folder: &Path) -> Result<Vec<String>> {
        let folder = folder.to_str().context("a path not UTF-8")?;
        let out = self.boto3(&["download", bucket, prefix, folder])?;
        serde_json::from_str(&out).with_context(|| format!("s3.py download: {out}"))
    }

    /// `p11trace-query ARGS` with this server's credentials and endpoint; its output, whatever
    /// its exit status.
    pub fn query_output(&self, args: &[&str]) -> Result<std::process::Output> {
        Ok(Command::new(crate::query_bin())
            .args(args)
            .envs(self.env())
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .output()?)
    }

    /// [`S3Server::query_output`], which must succeed.
    pub fn query(&self, args: &[&str]) -> Result<std::process::Output> {
        let output = self.query_output(args)?;
        ensure!(
            output.status.success(),
            "p11trace-query {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(output)
    }

    /// Runs `tests/scripts/s3.py ENDPOINT args…` with this server's environment; its stdout.
    fn boto3(&self, args: &[&str]) -> Result<String> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/s3.py");
        let mut command = Command::new("python3");
        command
            .arg(&script)
            .arg(&self.endpoint)
            .args(args)
            .envs(self.env())
            // No profile or credentials of the user's own.
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env_remove("AWS_PROFILE");
        let output = run(&mut command, OPERATION_TIMEOUT)?;
        ensure!(
            output.status.success(),
            "s3.py {args:?} failed: {}",
            text(&output.stderr)
        );
        Ok(text(&output.stdout))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        // A stopped process dies of SIGKILL too; SIGCONT first all the same, so that nothing
        // waits on a stopped server in between.
        let _ = self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The files below `folder` to upload, sorted: hidden entries and `*.tmp`/`*.wal` left out.
/// The files below `folder`, sorted, leaving out hidden entries and files being written
/// (`*.tmp`, `*.wal`).
pub fn files_below(folder: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut folders = vec![folder.to_path_buf()];
    while let Some(dir) = folders.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name.ends_with(".tmp") || name.ends_with(".wal") {
                continue;
            }
            let kind = entry.file_type()?;
            if kind.is_dir() {
                folders.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}
