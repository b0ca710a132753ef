//! Where a recorder writing to object storage keeps its local state (the spool), and the host
//! name its files and rows carry.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// Letters, digits, `.`, `_`, `-`: what a host name may hold to stand in a file name.
fn file_name_safe(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// `--host NAME` as given (checked), or the machine's host name made safe for file names.
pub fn host_name(given: Option<&str>) -> Result<String> {
    if let Some(name) = given {
        if name.is_empty() || name.len() > 64 || !name.chars().all(file_name_safe) {
            bail!(
                "--host {name:?}: use 1 to 64 letters, digits, '.', '_' or '-' (it goes into \
                 file names)"
            );
        }
        return Ok(name.to_owned());
    }
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let safe: String = machine
        .trim()
        .chars()
        .take(64)
        .map(|c| if file_name_safe(c) { c } else { '_' })
        .collect();
    Ok(if safe.is_empty() {
        "localhost".into()
    } else {
        safe
    })
}

/// `--spool DIR`, or the default for `url`: `$XDG_STATE_HOME/p11trace/spool/<url>`, else
/// `$HOME/.local/state/p11trace/spool/<url>` (the URL with every other character than letters,
/// digits, `.`, `_`, `-` as `_`).
pub fn spool_for(url: &str, given: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = given {
        return Ok(dir.to_owned());
    }
    let state = match (std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME")) {
        (Some(state), _) if !state.is_empty() => PathBuf::from(state),
        (_, Some(home)) if !home.is_empty() => Path::new(&home).join(".local/state"),
        _ => bail!(
            "cannot place the spool for {url}: neither XDG_STATE_HOME nor HOME is set; use --spool DIR"
        ),
    };
    let name: String = url
        .chars()
        .map(|c| if file_name_safe(c) { c } else { '_' })
        .collect();
    Ok(state.join("p11trace").join("spool").join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_checked_or_made_safe() {
        assert_eq!(host_name(Some("web-7.eu")).unwrap(), "web-7.eu");
        assert!(host_name(Some("a/b")).is_err());
        assert!(host_name(Some("")).is_err());
        let machine = host_name(None).unwrap();
        assert!(!machine.is_empty() && machine.chars().all(file_name_safe));
    }

    #[test]
    fn the_default_spool_is_named_after_the_url() {
        let dir = spool_for("s3://b/p", Some(Path::new("/x"))).unwrap();
        assert_eq!(dir, Path::new("/x"));
        let dir = spool_for("s3://b/p", None).unwrap();
        assert!(
            dir.ends_with("p11trace/spool/s3___b_p"),
            "{}",
            dir.display()
        );
    }
}
