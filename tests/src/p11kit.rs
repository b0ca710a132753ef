//! p11-kit managing the shim with `log-calls: yes`, in a configuration of its own: clients
//! whose p11-kit log (their stderr) and the recorder's dataset describe the same calls; or any
//! module file of one's own (the shipped `packaging/p11trace.module`).

use std::process::Command;

use anyhow::Result;

use crate::{Traced, shim, temp};

/// p11-kit's proxy module (Debian's p11-kit-modules).
pub const PROXY: &str = "/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so";

/// A p11-kit configuration of its own, in a fresh home: `user-config: only` (no system module
/// is loaded), and one module, the shim, with `log-calls: yes`.
pub struct P11Kit {
    home: tempfile::TempDir,
}

impl P11Kit {
    pub fn new() -> Result<P11Kit> {
        Self::with_module_file(&format!("module: {}\nlog-calls: yes\n", shim().display()))
    }

    /// The same, its one module file `p11trace.module` holding `module_file` instead.
    pub fn with_module_file(module_file: &str) -> Result<P11Kit> {
        let home = temp();
        let config = home.path().join(".config/pkcs11");
        std::fs::create_dir_all(config.join("modules"))?;
        std::fs::write(config.join("pkcs11.conf"), "user-config: only\n")?;
        std::fs::write(config.join("modules/p11trace.module"), module_file)?;
        Ok(P11Kit { home })
    }

    /// The home folder (its `.config/pkcs11/` is this configuration).
    pub fn home(&self) -> &std::path::Path {
        self.home.path()
    }

    /// `program args`, its p11-kit configuration this one, its calls traced into `traced`.
    /// p11-kit ignores user configurations in a process running as root (p11-kit/conf.c), so as
    /// root the client runs in a user namespace of its own, as uid 1000 (mapped to root: its files
    /// and the recorder's socket stay reachable).
    pub fn command(&self, traced: &Traced, program: &str, args: &[&str]) -> Command {
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let mut command = if root {
            let mut command = traced.token.command("unshare");
            command.args(["--user", "--map-user=1000", "--map-group=1000", program]);
            command
        } else {
            traced.token.command(program)
        };
        command
            .args(args)
            .env("HOME", self.home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("P11_KIT_NO_USER_CONFIG");
        traced.trace(&mut command);
        command
    }
}
