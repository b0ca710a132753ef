//! # p11trace-cli
//!
//! What every p11trace binary does the same way at its command line, so `p11trace-query` and
//! `p11trace-recorder` cannot drift apart: a usage error is one stderr line and exit 2
//! ([`usage`]); an error message is one line ([`one_line`]); shell completions and man pages
//! come from the binary's own clap definition ([`docs_main`], behind `just completions` and
//! `just man`).
//!
//! Owns only clap glue. It must not depend on any other p11trace crate (they depend on it), and
//! the shim never depends on it.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::ValueEnum;
use clap_complete::{Generator, Shell};

/// `--help` and `--version` as clap prints them (exit 0), and the help of a command given
/// without its arguments (exit 2); any other usage error as one line naming `program`, exit 2.
pub fn usage(program: &str, error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => error.exit(),
        _ => {
            let rendered = error.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            let message = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("{program}: error: {message} (see --help)");
            ExitCode::from(2)
        }
    }
}

/// An error on one line: the lines of a multi-line message (polars' plans, SQL) joined.
pub fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The `main` of a `NAME-docs completions|man DIR` generator for `command`: completions for
/// every shell clap_complete knows (bash, zsh, fish, elvish, PowerShell), or one man page per
/// (sub)command. Files 0600 in a 0700 folder, as everything p11trace writes (`install -m 0644`
/// them to share). Exit 0, 1 when a file cannot be written, 2 on a usage error.
pub fn docs_main(command: clap::Command) -> ExitCode {
    let program = format!("{}-docs", command.get_name());
    let usage = format!("usage: {program} completions|man DIR");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, dir] = args.as_slice() else {
        eprintln!("{program}: error: {usage}");
        return ExitCode::from(2);
    };
    let result = match kind.as_str() {
        "completions" => completions(command, Path::new(dir)),
        "man" => man(command, Path::new(dir)),
        other => {
            eprintln!("{program}: error: unknown kind `{other}`; {usage}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{program}: error: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn completions(mut command: clap::Command, dir: &Path) -> Result<()> {
    private_dir(dir)?;
    let name = command.get_name().to_owned();
    for shell in Shell::value_variants() {
        let mut script = Vec::new();
        clap_complete::generate(*shell, &mut command, &name, &mut script);
        write_private(&dir.join(shell.file_name(&name)), &script)?;
    }
    Ok(())
}

/// One page for the command and one for each (sub)command below it, `NAME-SUB.1` as
/// clap_mangen names them; nothing else in `dir` is touched.
fn man(command: clap::Command, dir: &Path) -> Result<()> {
    private_dir(dir)?;
    let mut command = command.disable_help_subcommand(true);
    command.build();
    pages(&command, dir)
}

fn pages(command: &clap::Command, dir: &Path) -> Result<()> {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        pages(sub, dir)?;
    }
    let man = clap_mangen::Man::new(command.clone());
    let mut page = Vec::new();
    man.render(&mut page)
        .with_context(|| format!("cannot render the man page of {}", command.get_name()))?;
    write_private(&dir.join(man.get_filename()), &page)
}

/// `bytes` into `file`, mode 0600 from its creation (an existing file is made 0600 too).
fn write_private(file: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("cannot write {}", file.display()))?;
    out.set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|()| out.write_all(bytes))
        .with_context(|| format!("cannot write {}", file.display()))
}

/// `dir`, created 0700 if missing; an existing folder (a system man folder, say) keeps its mode.
fn private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}
