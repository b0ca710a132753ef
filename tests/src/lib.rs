//! # p11trace-tests
//!
//! Fixtures for the end-to-end tests in `tests/tests/` and for the benchmarks: a SoftHSM2 or
//! Kryoptic token restored from a snapshot, the real recorder process, real clients
//! (`pkcs11-tool`, `p11tool`, `p11client`), the real `pkcs11-spy.so`, and the real DuckDB CLI.
//! Nothing here is a mock.
//!
//! - [`fixture`]: a token, a recorder, and runs traced through the shim into it.
//! - [`fleet`]: recorders of several hosts uploading into one bucket of [`s3::S3Server`], and
//!   the checks of what they uploaded.
//! - [`token`] and [`recorder`]: the two halves on their own.
//! - [`oracle`]: modules that log every call between the shim and the token.
//! - [`p11kit`]: p11-kit managing the shim, logging every call (`log-calls: yes`).
//! - [`clients`]: real applications (GnuTLS, p11-kit, Java, OpenSSL, python-pkcs11) and the
//!   token they look for.
//! - [`data`]: reading datasets and imports back with DuckDB and `p11trace-query`.
//! - [`process`]: running commands with a timeout, and what a process cost.
//! - [`prometheus`]: scraping the recorder's `--metrics` endpoint, parsed as Prometheus does.
//! - [`scan`]: looking for secrets in what was written.
//! - [`readme`]: the README's runnable blocks.
//! - [`module`]: loading a PKCS#11 module (the test client's and the benchmark client's).
//! - [`s3`]: a real S3-compatible server (`moto_server`) on a loopback port, and its buckets.
//!
//! The binaries under test are found in the cargo target folder (`just test` builds them first);
//! the pkcs11-spy logs the tests import are in `tests/fixtures/corpus/`, the pkcs11-logger ones in
//! `tests/fixtures/pkcs11-logger/`, inside this repository.

use std::path::PathBuf;

pub mod clients;
pub mod data;
pub mod fixture;
pub mod fleet;
pub mod module;
pub mod oracle;
pub mod p11kit;
pub mod process;
pub mod prometheus;
pub mod readme;
pub mod recorder;
pub mod s3;
pub mod scan;
pub mod token;

pub use data::*;
pub use fixture::*;
pub use oracle::*;
pub use process::*;
pub use recorder::*;
pub use scan::*;
pub use token::*;

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

/// The counting pass-through module (`tests/p11count`).
pub fn p11count() -> PathBuf {
    target_dir().join("libp11count.so")
}

/// The workspace root (for `schemas/`).
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `tests/fixtures/`: files the tests read.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A file of the corpus of real pkcs11-spy logs (`tests/fixtures/corpus/`, see its README): each
/// `X.log` beside its independently counted ground truth `X.expected.json`.
pub fn corpus(name: &str) -> PathBuf {
    fixtures().join("corpus").join(name)
}

/// Every log of the corpus, sorted.
pub fn corpus_logs() -> Vec<PathBuf> {
    logs_in("corpus")
}

/// A file of the real pkcs11-logger logs (`tests/fixtures/pkcs11-logger/`, see its README): each
/// `X.log` beside its independently counted ground truth `X.expected.json`.
pub fn logger_fixture(name: &str) -> PathBuf {
    fixtures().join("pkcs11-logger").join(name)
}

/// Every pkcs11-logger log of the fixtures, sorted.
pub fn logger_fixture_logs() -> Vec<PathBuf> {
    logs_in("pkcs11-logger")
}

/// The `.log` files of a folder of `tests/fixtures/`, sorted.
fn logs_in(folder: &str) -> Vec<PathBuf> {
    let folder = fixtures().join(folder);
    let mut logs: Vec<PathBuf> = std::fs::read_dir(&folder)
        .unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs
}

/// A short-path temporary folder (Unix socket paths must stay under 108 bytes).
pub fn temp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("p11t-")
        .tempdir_in("/tmp")
        .expect("temporary folder")
}

/// A new folder `path` with exactly `mode` (whatever the umask): a socket folder the shim
/// accepts (0700), or one it must refuse.
pub fn folder(path: &std::path::Path, mode: u32) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(path.to_path_buf())
}

/// pkcs11-tool's arguments for the SO to log in and set the user PIN.
pub const INIT_USER_PIN: [&str; 8] = [
    "--login",
    "--login-type",
    "so",
    "--so-pin",
    SO_PIN,
    "--init-pin",
    "--new-pin",
    USER_PIN,
];

/// `--login --pin <user PIN>` and then `rest`: pkcs11-tool's arguments for a logged-in job.
pub fn login<'a>(rest: &[&'a str]) -> Vec<&'a str> {
    ["--login", "--pin", USER_PIN]
        .into_iter()
        .chain(rest.iter().copied())
        .collect()
}
