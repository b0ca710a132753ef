//! `p11trace-query-docs completions DIR` / `p11trace-query-docs man DIR`: shell completions
//! (bash, zsh, fish, elvish, PowerShell) and man pages (one per subcommand), generated from the
//! same clap definition as `p11trace-query` (`just completions`, `just man`). Files 0600 in a
//! 0700 folder, as everything we write; `install -m 0644` them to share.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, ValueEnum};
use clap_complete::Shell;

const USAGE: &str = "usage: p11trace-query-docs completions|man DIR";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, dir] = args.as_slice() else {
        eprintln!("p11trace-query-docs: error: {USAGE}");
        return ExitCode::from(2);
    };
    let command = p11trace_query::cli::Cli::command();
    let result = match kind.as_str() {
        "completions" => completions(command, Path::new(dir)),
        "man" => man(command, Path::new(dir)),
        other => {
            eprintln!("p11trace-query-docs: error: unknown kind `{other}`; {USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("p11trace-query-docs: error: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn completions(mut command: clap::Command, dir: &Path) -> Result<()> {
    private_dir(dir)?;
    let name = command.get_name().to_owned();
    for shell in Shell::value_variants() {
        let file = clap_complete::generate_to(*shell, &mut command, &name, dir)
            .with_context(|| format!("cannot write {shell} completions into {}", dir.display()))?;
        private_file(&file)?;
    }
    Ok(())
}

fn man(command: clap::Command, dir: &Path) -> Result<()> {
    private_dir(dir)?;
    clap_mangen::generate_to(command, dir)
        .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        private_file(&entry?.path())?;
    }
    Ok(())
}

fn private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

fn private_file(file: &Path) -> Result<()> {
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private", file.display()))
}
