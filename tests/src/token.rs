//! A token in its own folder (SoftHSM2 or Kryoptic), initialised with distinctive PINs and
//! snapshotted, so each run can start from the same state.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::process::{run, text};
use crate::{INIT_USER_PIN, SO_PIN, SOFTHSM, USER_PIN, target_dir, temp};

/// Where `just kryoptic` builds Kryoptic, the PKCS#11 3.2 token: beside the target folder's
/// profiles.
pub fn kryoptic_path() -> PathBuf {
    target_dir()
        .parent()
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
        .join("kryoptic/libkryoptic_pkcs11.so")
}

/// Kryoptic's module, which must have been built.
pub fn kryoptic() -> PathBuf {
    let path = kryoptic_path();
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
        let tokens = token.dir.path().join("tokens");
        let (conf, init): (String, Vec<Vec<&str>>) = match provider {
            Provider::SoftHsm => (
                format!(
                    "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                    tokens.display()
                ),
                vec![vec![
                    "softhsm2-util",
                    "--init-token",
                    "--free",
                    "--label",
                    label,
                    "--so-pin",
                    SO_PIN,
                    "--pin",
                    USER_PIN,
                ]],
            ),
            Provider::Kryoptic => (
                format!(
                    "[[slots]]\nslot = 42\ndbtype = \"sqlite\"\ndbargs = \"{}/token.sql\"\n",
                    tokens.display()
                ),
                vec![
                    vec![
                        "pkcs11-tool",
                        "--init-token",
                        "--label",
                        label,
                        "--so-pin",
                        SO_PIN,
                    ],
                    [&["pkcs11-tool", "--token-label", label][..], &INIT_USER_PIN].concat(),
                ],
            ),
        };
        std::fs::write(token.conf(), conf)?;
        for step in init {
            let mut command = token.command(step[0]);
            if provider == Provider::Kryoptic {
                command.arg("--module").arg(kryoptic());
            }
            let output = run(command.args(&step[1..]), Duration::from_secs(60))?;
            if !output.status.success() {
                bail!(
                    "initialising the {provider:?} token failed ({}): {}",
                    step[0],
                    text(&output.stderr)
                );
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

    /// Generates key pairs directly on the real module (pkcs11-tool key type, label, id), then
    /// makes them part of the snapshot.
    pub fn add_key_pairs(&self, keys: &[(&str, &str, &str)]) -> Result<()> {
        self.restore()?;
        for &(key_type, label, id) in keys {
            let output = run(
                &mut self.pkcs11_tool(
                    &self.module(),
                    &crate::login(&[
                        "--keypairgen",
                        "--key-type",
                        key_type,
                        "--id",
                        id,
                        "--label",
                        label,
                    ]),
                ),
                Duration::from_secs(120),
            )?;
            if !output.status.success() {
                bail!(
                    "pkcs11-tool --keypairgen {key_type} failed: {}",
                    text(&output.stderr)
                );
            }
        }
        self.snapshot()
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
