//! What the shim would see: the variables it reads, its configuration file (with the shim's own
//! trust rule), and from them the real module and the socket it would use.

use std::path::PathBuf;

/// The variables the shim reads, in the order they are reported.
pub const VARIABLES: [&str; 7] = [
    "P11TRACE_MODULE",
    "PKCS11SPY",
    "P11TRACE_SOCKET",
    "P11TRACE_CONFIG",
    "P11TRACE_MODE",
    "P11TRACE_REDACT",
    "PKCS11SPY_OUTPUT",
];

/// The configuration file's `key = value` settings, or why the shim would ignore the file.
pub type Config = Result<Vec<(String, String)>, String>;

/// Where a setting came from.
#[derive(Debug, Clone)]
pub struct Sourced {
    pub value: PathBuf,
    /// `--module`, `P11TRACE_MODULE`, `module in /etc/p11trace.conf`, `default rule`, …
    pub source: String,
}

/// The environment and configuration file as the shim would read them.
#[derive(Debug)]
pub struct Setup {
    /// Each of [`VARIABLES`] with its value, if set.
    pub variables: Vec<(&'static str, Option<String>)>,
    /// The configuration file's path and whether it was read (or why not).
    pub config_path: String,
    pub config: Config,
    /// What the shim would warn about in a file it reads (a line that is not `key = value`).
    pub config_warnings: Vec<String>,
}

impl Setup {
    pub fn read() -> Setup {
        let variables = VARIABLES
            .iter()
            .map(|&name| (name, std::env::var(name).ok().filter(|v| !v.is_empty())))
            .collect();
        let config_path = std::env::var("P11TRACE_CONFIG")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| p11trace_record::config_file::DEFAULT_PATH.to_owned());
        let (config, config_warnings) = read_config(&config_path);
        Setup {
            variables,
            config_path,
            config,
            config_warnings,
        }
    }

    pub fn var(&self, name: &str) -> Option<&str> {
        self.variables
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    fn in_file(&self, key: &str) -> Option<Sourced> {
        let settings = self.config.as_ref().ok()?;
        let (_, value) = settings.iter().rev().find(|(k, _)| k == key)?;
        Some(Sourced {
            value: PathBuf::from(value),
            source: format!("`{key}` in {}", self.config_path),
        })
    }

    fn in_var(&self, name: &str) -> Option<Sourced> {
        self.var(name).map(|value| Sourced {
            value: PathBuf::from(value),
            source: name.to_owned(),
        })
    }

    /// The real module the shim would load: P11TRACE_MODULE, else PKCS11SPY, else the file.
    pub fn module(&self) -> Option<Sourced> {
        self.in_var("P11TRACE_MODULE")
            .or_else(|| self.in_var("PKCS11SPY"))
            .or_else(|| self.in_file("module"))
    }

    /// The socket the shim would use: P11TRACE_SOCKET, else the file, else the default rule.
    pub fn socket(&self) -> Sourced {
        self.in_var("P11TRACE_SOCKET")
            .or_else(|| self.in_file("socket"))
            .unwrap_or_else(|| Sourced {
                value: p11trace_record::socket::default_socket_path(
                    p11trace_record::socket::current_uid(),
                ),
                source: "the default rule".into(),
            })
    }

    /// The recording mode (`record` unless set otherwise).
    pub fn mode(&self) -> String {
        self.var("P11TRACE_MODE")
            .map(str::to_owned)
            .or_else(|| self.in_file("mode").map(|s| s.value.display().to_string()))
            .unwrap_or_else(|| "record".into())
    }
}

/// The configuration file's `key = value` lines, under the shim's own rule
/// ([`p11trace_record::config_file`]; doctor is not set-id). `Ok(empty)` when there is none;
/// `Err` with the shim's words when it would ignore the file; beside it, the shim's warnings
/// about a file it reads.
fn read_config(path: &str) -> (Config, Vec<String>) {
    let read = p11trace_record::config_file::read(path, false);
    if read.ignored {
        return (Err(read.warnings.join("; ")), Vec::new());
    }
    (Ok(read.settings), read.warnings)
}
