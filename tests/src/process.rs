//! Running a command to completion with a timeout, comparing what clients print, and what a
//! finished process cost (from `wait4(2)`: exact, per child, no polling of `/proc`).

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

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

/// [`run`], failing with the command's stderr unless it exits 0.
pub fn run_ok(command: &mut Command, timeout: Duration) -> Result<Output> {
    let output = run(command, timeout)?;
    ensure!(
        output.status.success(),
        "{:?} failed ({}): {}",
        command.get_program(),
        output.status,
        text(&output.stderr)
    );
    Ok(output)
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

/// What one finished process cost.
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    pub wall: Duration,
    /// Peak resident set size, bytes.
    pub max_rss: u64,
    /// User + system CPU time.
    pub cpu: Duration,
    pub success: bool,
}

fn timeval(tv: libc::timeval) -> Duration {
    Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64)
}

/// Reaps our child `pid` (started at `started`) with `wait4(2)`, which also reports the child's
/// own resource usage: waits for its exit when `block`, else returns `None` while it still runs.
/// A `std::process::Child` of that pid must not be waited for afterwards.
pub fn reap(pid: libc::pid_t, started: Instant, block: bool) -> Result<Option<(ExitStatus, Cost)>> {
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let flags = if block { 0 } else { libc::WNOHANG };
    // SAFETY: waiting for our own child with valid out-pointers.
    let reaped = unsafe { libc::wait4(pid, &mut status, flags, &mut usage) };
    if reaped == 0 {
        return Ok(None);
    }
    if reaped != pid {
        bail!("wait4 on pid {pid}: {}", std::io::Error::last_os_error());
    }
    let cost = Cost {
        wall: started.elapsed(),
        max_rss: usage.ru_maxrss as u64 * 1024,
        cpu: timeval(usage.ru_utime) + timeval(usage.ru_stime),
        success: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
    };
    Ok(Some((ExitStatus::from_raw(status), cost)))
}
