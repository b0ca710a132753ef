//! `p11trace-recorder run -- COMMAND`: one command traced from start to end, like `strace -c`.
//!
//! A private recorder — this same executable, started as `--dataset D --socket S` in a process
//! group of its own, so that a terminal's Ctrl-C reaches the command and not it — listens in a
//! fresh 0700 folder. The command runs with `P11TRACE_SOCKET=S` (and `P11TRACE_MODULE` from
//! `--module`). Signals sent to `run` itself (SIGINT, SIGTERM, SIGHUP, SIGQUIT) are passed on to
//! the command; one from the terminal already reached it (same foreground process group) and
//! is not sent twice. Once the command has exited the recorder is stopped with SIGTERM, which
//! makes it drain every client before it exits, and `p11trace-query analyze D`, found beside this
//! executable, prints the analysis to stderr. `run` exits with the command's status.

use std::ffi::OsStr;
use std::io::{BufRead as _, BufReader};
use std::os::fd::AsFd as _;
use std::os::unix::fs::DirBuilderExt as _;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::options::RunArgs;

/// The command's pid once it runs (0 before, -1 after).
static CHILD: AtomicI32 = AtomicI32::new(0);
/// A signal that came before the command was started.
static PENDING: AtomicI32 = AtomicI32::new(0);

/// The signals passed on to the command.
const FORWARDED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// How long the private recorder may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Signal handler: passes a signal on to the command. Only atomics and `kill` (async-signal-safe).
extern "C" fn forward(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel hands an SA_SIGINFO handler a valid siginfo (null checked anyway).
    let from_kernel = unsafe { info.as_ref() }.is_some_and(|info| info.si_code == libc::SI_KERNEL);
    let pid = CHILD.load(Ordering::Acquire);
    if pid > 0 {
        // A terminal's signal (SI_KERNEL) went to the whole foreground group, the command too.
        if !from_kernel {
            // SAFETY: kill(2) is async-signal-safe; `pid` is our child's.
            unsafe { libc::kill(pid, signal) };
        }
    } else if pid == 0 {
        PENDING.store(signal, Ordering::Release);
    } else {
        // The command has ended: the signal stops `run` itself, as it would any program (the
        // private recorder, losing its parent, drains or keeps the rest in its log).
        // SAFETY: signal(2) and raise(3) are async-signal-safe.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
        }
    }
}

fn install_forwarding() -> Result<()> {
    for signal in FORWARDED {
        // SAFETY: a zeroed sigaction is valid; we set the handler, SA_SIGINFO and SA_RESTART, an
        // empty mask, and install it for a signal that may be caught.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = forward as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            bail!(
                "cannot install the handler of signal {signal}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Blocks until the process `pid` (our child) has ended, leaving it to be reaped (`WNOWAIT`).
fn wait_unreaped(pid: libc::pid_t) {
    loop {
        // SAFETY: a zeroed siginfo_t is valid; waitid writes into our local.
        let rc = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// The exit status a shell would report for `status` (128+N for signal N).
fn shell_status(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => (code & 0xff) as u8,
        (None, Some(signal)) => (128 + signal).clamp(0, 255) as u8,
        (None, None) => 1,
    }
}

/// `YYYYMMDDTHHMMSSZ` of a Unix time (UTC), for folder names.
fn utc_stamp(secs: u64) -> String {
    // Civil date from days since 1970-01-01 (Howard Hinnant's `civil_from_days`).
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

fn unique_suffix() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{}-{}", utc_stamp(secs), std::process::id())
}

/// A fresh 0700 folder for the private socket (never the default socket's folder).
fn private_folder() -> Result<PathBuf> {
    let random = u32::from_ne_bytes(crate::acceptor::random_bytes::<4>());
    let folder =
        std::env::temp_dir().join(format!("p11trace-run-{}-{random:08x}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&folder)
        .with_context(|| {
            format!(
                "cannot create the private socket folder {}",
                folder.display()
            )
        })?;
    Ok(folder)
}

/// The default dataset: a fresh folder in the current directory.
fn fresh_dataset() -> Result<PathBuf> {
    let name = format!("p11trace-run-{}", unique_suffix());
    let path = std::env::current_dir()
        .context("cannot read the current directory (give --dataset DIR)")?
        .join(name);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&path)
        .with_context(|| format!("cannot create {} (give --dataset DIR)", path.display()))?;
    Ok(path)
}

/// The private recorder, listening.
struct Recorder {
    child: Child,
    /// Its summary line (`stopped: clients=… records=…`) once it has printed it.
    summary: Arc<Mutex<Option<String>>>,
    echo: std::thread::JoinHandle<()>,
}

impl Recorder {
    fn start(dataset: &Path, socket: &Path) -> Result<Recorder> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let mut command = Command::new(&exe);
        command
            .arg("--dataset")
            .arg(dataset)
            .arg("--socket")
            .arg(socket)
            .env_remove("P11TRACE_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: runs in the forked child before exec; prctl(2) is async-signal-safe. Should
        // `run` die without stopping it, the recorder is sent SIGTERM (it drains and exits).
        unsafe {
            command.pre_exec(|| {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGTERM as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start the recorder {}", exe.display()))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow!("the recorder's stderr is not piped"))?;
        let summary = Arc::new(Mutex::new(None));
        let (ready_tx, ready_rx) = mpsc::channel();
        let echo = {
            let summary = summary.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if line.starts_with("p11trace-recorder: listening on ") {
                        let _ = ready_tx.send(());
                        continue;
                    }
                    if line.starts_with("p11trace-recorder: stopped: ") {
                        *summary.lock().unwrap_or_else(|p| p.into_inner()) = Some(line.clone());
                    }
                    eprintln!("{line}");
                }
            })
        };
        // Waits in steps, so a signal that comes meanwhile (PENDING) ends the wait: the caller
        // then stops the recorder and does not start the command.
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        loop {
            match ready_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(()) => break,
                Err(mpsc::RecvTimeoutError::Timeout) if PENDING.load(Ordering::Acquire) != 0 => {
                    break;
                }
                Err(mpsc::RecvTimeoutError::Timeout) if std::time::Instant::now() < deadline => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().context("waiting for the recorder")?;
                    let _ = echo.join();
                    bail!("the recorder did not start ({status}); see its message above")
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("the recorder was not listening after {START_TIMEOUT:?}")
                }
            }
        }
        Ok(Recorder {
            child,
            summary,
            echo,
        })
    }

    /// Stops the recorder (it drains every client first); its summary line, if it printed one.
    fn stop(mut self) -> Result<Option<String>> {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signals our own child, which we have not reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = self.child.wait().context("waiting for the recorder")?;
        let _ = self.echo.join();
        if !status.success() {
            bail!("the recorder ended with {status}; the dataset may be incomplete");
        }
        Ok(self
            .summary
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take())
    }
}

/// The `records=N` of the recorder's summary line.
fn records_in(summary: &str) -> Option<u64> {
    summary
        .split_whitespace()
        .find_map(|field| field.strip_prefix("records="))
        .and_then(|n| n.parse().ok())
}

/// Prints the analysis of `dataset` to stderr with the `p11trace-query` beside this executable.
fn analyse(dataset: &Path, summary: Option<&str>) {
    if summary.and_then(records_in) == Some(0) {
        eprintln!(
            "p11trace-recorder run: nothing was recorded: does the command load \
             libp11trace_shim.so as its PKCS#11 module? (`p11trace-recorder doctor` checks the setup)"
        );
        return;
    }
    let query = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("p11trace-query")));
    let Some(query) = query.filter(|q| q.is_file()) else {
        eprintln!(
            "p11trace-recorder run: analysis skipped: p11trace-query is not installed beside \
             this executable (run `p11trace-query analyze {}` where it is)",
            dataset.display()
        );
        return;
    };
    let stdout = match std::io::stderr().as_fd().try_clone_to_owned() {
        Ok(fd) => Stdio::from(fd),
        Err(_) => Stdio::inherit(),
    };
    match Command::new(&query)
        .arg("analyze")
        .arg(dataset)
        .stdin(Stdio::null())
        .stdout(stdout)
        .status()
    {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!(
            "p11trace-recorder run: the analysis ({}) ended with {status}",
            query.display()
        ),
        Err(error) => eprintln!(
            "p11trace-recorder run: analysis skipped: cannot run {}: {error}",
            query.display()
        ),
    }
}

/// Starts the command; on failure, the shell's status (127 not found, 126 not executable).
fn spawn(args: &RunArgs, socket: &Path) -> Result<Child, u8> {
    let (program, rest) = args.command.split_first().ok_or(2u8)?;
    let mut command = Command::new(program);
    command.args(rest).env("P11TRACE_SOCKET", socket);
    if let Some(module) = &args.module {
        command.env("P11TRACE_MODULE", module);
    }
    command.spawn().map_err(|error| {
        let name = Path::new(program).display();
        match error.kind() {
            std::io::ErrorKind::NotFound => {
                eprintln!("p11trace-recorder run: {name}: command not found");
                127
            }
            std::io::ErrorKind::PermissionDenied => {
                eprintln!("p11trace-recorder run: {name}: permission denied (not executable)");
                126
            }
            _ => {
                eprintln!("p11trace-recorder run: {name}: cannot execute: {error}");
                126
            }
        }
    })
}

/// `p11trace-recorder run`.
pub fn main(args: &RunArgs) -> ExitCode {
    match trace(args) {
        Ok(status) => ExitCode::from(status),
        Err(error) => {
            eprintln!("p11trace-recorder run: error: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn trace(args: &RunArgs) -> Result<u8> {
    install_forwarding()?;
    let folder = private_folder()?;
    let outcome = trace_in(args, &folder);
    let _ = std::fs::remove_dir_all(&folder);
    outcome
}

fn trace_in(args: &RunArgs, folder: &Path) -> Result<u8> {
    let socket = folder.join("recorder.sock");
    let (dataset, created) = match &args.dataset {
        Some(dataset) => (dataset.clone(), false),
        None => (fresh_dataset()?, true),
    };
    let recorder = match Recorder::start(&dataset, &socket) {
        Ok(recorder) => recorder,
        Err(error) => {
            if created {
                let _ = std::fs::remove_dir_all(&dataset);
            }
            return Err(error);
        }
    };
    let pending = PENDING.swap(0, Ordering::AcqRel);
    let child = if pending != 0 {
        Err((128 + pending) as u8)
    } else {
        spawn(args, &socket)
    };
    let mut child = match child {
        Ok(child) => child,
        Err(status) => {
            CHILD.store(-1, Ordering::Release);
            let _ = recorder.stop();
            if created {
                let _ = std::fs::remove_dir_all(&dataset);
            }
            return Ok(status);
        }
    };
    CHILD.store(child.id() as i32, Ordering::Release);
    let early = PENDING.swap(0, Ordering::AcqRel);
    if early != 0 {
        // SAFETY: signals our own child, not reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, early) };
    }
    // The command's end, waited for without reaping it: until CHILD says it is over, its pid
    // cannot be reused, so the handler never signals a stranger.
    wait_unreaped(child.id() as libc::pid_t);
    CHILD.store(-1, Ordering::Release);
    let status = child.wait();
    let stopped = recorder.stop();
    let status = status.with_context(|| {
        format!(
            "waiting for {}",
            Path::new(args.command.first().map_or(OsStr::new(""), |c| c)).display()
        )
    })?;
    match &stopped {
        Ok(summary) => analyse(&dataset, summary.as_deref()),
        Err(error) => eprintln!("p11trace-recorder run: {error:#}"),
    }
    eprintln!("dataset: {}", dataset.display());
    Ok(shell_status(status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_read_from_the_summary_line() {
        let line = "p11trace-recorder: stopped: clients=1 records=12 files=2 dropped=0";
        assert_eq!(records_in(line), Some(12));
        assert_eq!(records_in("p11trace-recorder: stopped: clients=0"), None);
    }

    #[test]
    fn stamps_are_utc_dates() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(951_782_400 + 3_723), "20000229T010203Z");
        assert_eq!(utc_stamp(1_796_283_768), "20261203T074248Z");
    }

    #[test]
    fn statuses_are_the_shell_s() {
        assert_eq!(shell_status(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(shell_status(ExitStatus::from_raw(libc::SIGTERM)), 143);
    }
}
