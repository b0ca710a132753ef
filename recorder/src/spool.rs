//! Where a recorder writing to object storage keeps its local state (the spool), and the host
//! name its files and rows carry.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

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

/// `--spool DIR`, or the default for `url`: `$XDG_STATE_HOME/p11trace/spool/<name>`, else
/// `$HOME/.local/state/p11trace/spool/<name>`, where `<name>` is the URL (every character but
/// letters, digits, `.`, `_`, `-` as `_`; at most 96 of them) and 12 hex digits of its SHA-256,
/// so two URLs never share a spool.
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
    let readable: String = url
        .chars()
        .take(96)
        .map(|c| if file_name_safe(c) { c } else { '_' })
        .collect();
    let digest = Sha256::digest(url.as_bytes());
    let tag: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    Ok(state
        .join("p11trace")
        .join("spool")
        .join(format!("{readable}-{tag}")))
}

/// Says at start when an `s3://` dataset has no credential variable: object_store then asks the
/// instance metadata service (it reads no `~/.aws` files and no `AWS_PROFILE`).
pub fn note_missing_credentials(url: &str) {
    if !(url.starts_with("s3://") || url.starts_with("s3a://")) {
        return;
    }
    // What object_store takes credentials from besides the metadata service.
    let named = [
        "AWS_ACCESS_KEY_ID",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ]
    .iter()
    .any(|key| std::env::var_os(key).is_some_and(|v| !v.is_empty()));
    if !named {
        eprintln!(
            "p11trace-recorder: note: no AWS credentials in the environment for {url}; the \
             instance's metadata service will be asked (set AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY otherwise; ~/.aws files and AWS_PROFILE are not read)"
        );
    }
}

/// Ties a spool to its dataset URL (`SPOOL/.remote`, written on first use): a spool holds
/// files of one dataset, and its leftovers must never go to another.
pub fn bind(spool: &Path, url: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let marker = spool.join(".remote");
    match std::fs::read_to_string(&marker) {
        Ok(bound) if bound.trim_end() == url => Ok(()),
        Ok(bound) => bail!(
            "the spool {} holds files for {}, not {url}; use another --spool (or upload or \
             remove what it holds first)",
            spool.display(),
            bound.trim_end()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&marker)
                .with_context(|| format!("cannot create {}", marker.display()))?;
            writeln!(file, "{url}").with_context(|| format!("cannot write {}", marker.display()))
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot read {}", marker.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spool_serves_one_url() {
        let dir = tempfile::tempdir().unwrap();
        bind(dir.path(), "s3://a/p").unwrap();
        bind(dir.path(), "s3://a/p").unwrap();
        let refused = bind(dir.path(), "s3://b/p").unwrap_err().to_string();
        assert!(refused.contains("holds files for s3://a/p"), "{refused}");
    }

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
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("s3___b_p-") && name.len() == 9 + 12,
            "{name}"
        );
        let other = spool_for("s3://b_p", None).unwrap();
        assert_ne!(dir, other, "two URLs, one readable name, two spools");
        let long = spool_for(&format!("s3://b/{}", "x".repeat(1000)), None).unwrap();
        assert!(long.file_name().unwrap().len() <= 96 + 13);
    }
}
