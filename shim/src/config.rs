//! Configuration: environment variables first, then a `key = value` file (`P11TRACE_CONFIG`, else
//! `/etc/p11trace.conf`) for hosts that cannot set environment variables.
//!
//! Variables are read with `secure_getenv`: in a setuid/setgid process they are ignored, so an
//! unprivileged user cannot make a privileged host load arbitrary code; only `/etc/p11trace.conf`
//! applies there. A configuration file is read only if root owns it (or, outside set-id
//! processes, the effective user) and neither its group nor others can write it.

use std::ffi::{CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use p11trace_record::socket;
use p11trace_record::wire::Redaction;

/// What the shim does with each call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward and record (default).
    Record,
    /// Forward only.
    Off,
    /// Forward and record, and refuse calls that could not be recorded.
    Audit,
}

/// Where the real module's path came from (named in error messages).
#[derive(Debug, Clone)]
pub struct ModuleSource {
    pub variable: &'static str,
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub module: Option<ModuleSource>,
    pub mode: Mode,
    pub socket: PathBuf,
    pub redaction: Redaction,
    /// Capacity of the in-process record queue (test-only override: `P11TRACE_QUEUE_CAPACITY`).
    pub queue_capacity: usize,
    /// How long `C_Finalize` waits for queued records to reach the recorder.
    pub finalize_wait: Duration,
    /// How long process exit (without `C_Finalize`) waits for the same.
    pub exit_wait: Duration,
    /// Problems found while reading the configuration, reported once.
    pub warnings: Vec<String>,
    /// Test-only (`P11TRACE_TEST_PANIC=C_Name`): panic while recording calls of this function,
    /// to prove no panic crosses the FFI boundary.
    pub test_panic: Option<p11trace_record::Func>,
    /// Test-only (`P11TRACE_TEST_PANIC=client`): panic while building the client (the first call
    /// of each process generation), to prove it neither hangs nor reaches the host.
    pub test_panic_building: bool,
    /// Test-only (`P11TRACE_TEST_PANIC=sender`): panic in the sender thread as it starts.
    pub test_panic_sender: bool,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

/// The configuration, read once per process.
pub fn get() -> &'static Config {
    CONFIG.get_or_init(|| {
        // Our panics are caught at the FFI boundary and reported in one line by `diag`; the default
        // hook would print several more to the host's stderr. (This is the shim's own copy of std:
        // a Rust host keeps its hook.)
        std::panic::set_hook(Box::new(|_| {}));
        let config = Config::load();
        if !config.warnings.is_empty() {
            crate::diag::report(
                crate::diag::Problem::Config,
                format_args!("{}", config.warnings.join("; ")),
            );
        }
        config
    })
}

pub const DEFAULT_QUEUE_CAPACITY: usize = 16 * 1024;
/// The largest queue `P11TRACE_QUEUE_CAPACITY` may ask for (~300 MB of records).
pub const MAX_QUEUE_CAPACITY: usize = 1 << 20;
pub const DEFAULT_FINALIZE_WAIT: Duration = Duration::from_millis(1000);
pub const DEFAULT_EXIT_WAIT: Duration = Duration::from_millis(250);

unsafe extern "C" {
    /// glibc's `secure_getenv`: `getenv`, except null in setuid/setgid processes.
    fn secure_getenv(name: *const libc::c_char) -> *mut libc::c_char;
}

fn secure_env(name: &str) -> Option<String> {
    let key = CString::new(name).ok()?;
    // SAFETY: `key` is a valid C string; secure_getenv returns null or a pointer into the
    // environment, which we copy immediately.
    let value = unsafe { secure_getenv(key.as_ptr()) };
    if value.is_null() {
        return None;
    }
    // SAFETY: non-null pointers from secure_getenv point to NUL-terminated strings.
    let value = unsafe { CStr::from_ptr(value) };
    // An empty variable is an unset one (as doctor reads them): `P11TRACE_MODULE=` falls back
    // to PKCS11SPY and the file rather than loading "".
    (!value.is_empty()).then(|| String::from_utf8_lossy(value.to_bytes()).into_owned())
}

/// Whether this process runs with privileges its invoker does not have (setuid/setgid).
fn privileged() -> bool {
    // SAFETY: getauxval has no preconditions; AT_SECURE is set by the kernel for set-id
    // executables (and capability or LSM transitions), 0 otherwise.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// The configuration file's settings (its path from `P11TRACE_CONFIG`, else the default), under
/// the rule of [`p11trace_record::config_file`]; its problems go to `warnings`.
fn file_settings(warnings: &mut Vec<String>) -> Vec<(String, String)> {
    let path = secure_env("P11TRACE_CONFIG")
        .unwrap_or_else(|| p11trace_record::config_file::DEFAULT_PATH.to_owned());
    let read = p11trace_record::config_file::read(&path, privileged());
    warnings.extend(read.warnings);
    read.settings
}

impl Config {
    pub fn load() -> Config {
        let mut warnings = Vec::new();
        let file = file_settings(&mut warnings);
        let from_file = |key: &str| {
            file.iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let setting = |variable: &str, key: &str| secure_env(variable).or_else(|| from_file(key));

        let module = secure_env("P11TRACE_MODULE")
            .map(|path| ModuleSource {
                variable: "P11TRACE_MODULE",
                path: path.into(),
            })
            .or_else(|| {
                secure_env("PKCS11SPY").map(|path| ModuleSource {
                    variable: "PKCS11SPY",
                    path: path.into(),
                })
            })
            .or_else(|| {
                from_file("module").map(|path| ModuleSource {
                    variable: "module (config file)",
                    path: path.into(),
                })
            });

        let mode = match setting("P11TRACE_MODE", "mode").as_deref() {
            None | Some("") | Some("record") | Some("on") => Mode::Record,
            Some("off") => Mode::Off,
            Some("audit") => Mode::Audit,
            Some(other) => {
                warnings.push(format!(
                    "P11TRACE_MODE={other} is not record, off or audit; recording"
                ));
                Mode::Record
            }
        };
        let redaction = match setting("P11TRACE_REDACT", "redact").as_deref() {
            None | Some("") | Some("default") | Some("secrets") => Redaction::Default,
            Some("labels") => Redaction::Labels,
            Some(other) => {
                warnings.push(format!(
                    "P11TRACE_REDACT={other} is not default or labels; hashing labels"
                ));
                Redaction::Labels
            }
        };
        let socket = setting("P11TRACE_SOCKET", "socket")
            .map(PathBuf::from)
            .unwrap_or_else(|| socket::default_socket_path(socket::current_uid()));
        let queue_capacity = secure_env("P11TRACE_QUEUE_CAPACITY")
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n >= 1)
            .unwrap_or(DEFAULT_QUEUE_CAPACITY);
        // The queue is allocated at once (~300 B a record): a huge value must not exhaust the
        // host's memory.
        let queue_capacity = if queue_capacity > MAX_QUEUE_CAPACITY {
            warnings.push(format!(
                "P11TRACE_QUEUE_CAPACITY {queue_capacity} is above {MAX_QUEUE_CAPACITY}; using {MAX_QUEUE_CAPACITY}"
            ));
            MAX_QUEUE_CAPACITY
        } else {
            queue_capacity
        };
        let millis = |variable: &str, key: &str, default: Duration| {
            setting(variable, key)
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_millis)
                .unwrap_or(default)
        };
        Config {
            module,
            mode,
            socket,
            redaction,
            queue_capacity,
            finalize_wait: millis(
                "P11TRACE_FINALIZE_WAIT_MS",
                "finalize_wait_ms",
                DEFAULT_FINALIZE_WAIT,
            ),
            exit_wait: millis("P11TRACE_EXIT_WAIT_MS", "exit_wait_ms", DEFAULT_EXIT_WAIT),
            warnings,
            test_panic: secure_env("P11TRACE_TEST_PANIC")
                .and_then(|name| p11trace_record::Func::from_name(&name)),
            test_panic_building: secure_env("P11TRACE_TEST_PANIC").is_some_and(|v| v == "client"),
            test_panic_sender: secure_env("P11TRACE_TEST_PANIC").is_some_and(|v| v == "sender"),
        }
    }
}

/// The socket path as bytes (for messages).
pub fn display(path: &std::path::Path) -> String {
    String::from_utf8_lossy(OsStr::new(path).as_bytes()).into_owned()
}
