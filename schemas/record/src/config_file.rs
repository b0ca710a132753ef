//! The shim's configuration file (`P11TRACE_CONFIG`, else `/etc/p11trace.conf`): who may own it
//! and how it is read. The shim applies it before trusting the file; `p11trace-recorder doctor`
//! applies the same rule to say what the shim would do.

use std::fs::Metadata;
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;

/// The file read when `P11TRACE_CONFIG` is not set.
pub const DEFAULT_PATH: &str = "/etc/p11trace.conf";

/// Why a configuration file must not be trusted, if it must not: it decides which module the
/// host loads, so only root (or, in a process that is not set-id, the effective user) may own
/// it, and nobody else may be able to write it. `privileged`: the reading process is
/// setuid/setgid (`AT_SECURE`).
pub fn untrusted(metadata: &Metadata, privileged: bool) -> Option<String> {
    let euid = crate::socket::current_uid();
    let owner = metadata.uid();
    let owner_ok = owner == 0 || (owner == euid && !privileged);
    if !owner_ok {
        return Some(format!(
            "it is owned by uid {owner}, not by root{}",
            if privileged {
                " (required in a setuid/setgid process)".to_owned()
            } else {
                format!(" or uid {euid}")
            }
        ));
    }
    if metadata.mode() & 0o022 != 0 {
        return Some(format!(
            "it is writable by {} (mode {:o})",
            if metadata.mode() & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            },
            metadata.mode() & 0o777
        ));
    }
    None
}

/// What reading the file gave: its `key = value` settings in order (empty when there is no
/// file, or it is ignored), and the problems found, one line each, naming the file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Settings {
    pub settings: Vec<(String, String)>,
    pub warnings: Vec<String>,
    /// The file exists but is ignored as a whole (untrusted, unreadable).
    pub ignored: bool,
}

impl Settings {
    /// The last value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads the file at `path` under [`untrusted`] (checked on the open file, so the file read is
/// the file checked). A missing file is no settings and no warning; one that cannot be opened
/// (permissions) is ignored with a warning.
pub fn read(path: &str, privileged: bool) -> Settings {
    let mut out = Settings::default();
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return out,
        // There but unreadable (EACCES, a folder): said, not taken for a missing file.
        Err(error) => {
            out.warnings.push(format!("ignoring {path}: {error}"));
            out.ignored = true;
            return out;
        }
    };
    let ignore = |why: String, out: &mut Settings| {
        out.warnings.push(format!("ignoring {path}: {why}"));
        out.ignored = true;
    };
    match file.metadata() {
        Ok(metadata) => {
            if let Some(why) = untrusted(&metadata, privileged) {
                ignore(why, &mut out);
                return out;
            }
        }
        Err(error) => {
            ignore(error.to_string(), &mut out);
            return out;
        }
    }
    let mut text = String::new();
    if file.read_to_string(&mut text).is_err() {
        ignore("not readable text".into(), &mut out);
        return out;
    }
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((key, value)) => out
                .settings
                .push((key.trim().to_owned(), value.trim().to_owned())),
            None => out
                .warnings
                .push(format!("{path}:{}: expected `key = value`", index + 1)),
        }
    }
    out
}
