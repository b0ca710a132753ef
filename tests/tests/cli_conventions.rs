//! The conventions users expect of a command-line tool: shell completions and man pages that
//! name every subcommand (generated from the same clap definitions, as `just completions` and
//! `just man` do); exit 0 / 1 (runtime or input) / 2 (usage) with one line on stderr naming
//! what is wrong; no progress or colour off a terminal, `--quiet` silences the notes, colour
//! on a terminal unless `NO_COLOR`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use p11trace_tests::*;

fn bin(name: &str) -> PathBuf {
    target_dir().join(name)
}

fn output(command: &mut Command) -> Result<Output> {
    run(command, Duration::from_secs(120))
}

/// The subcommands `--help` lists under "Commands:" (without `help`).
fn subcommands(program: &Path) -> Result<Vec<String>> {
    let help = text(&output(Command::new(program).arg("--help"))?.stdout);
    Ok(help
        .lines()
        .skip_while(|line| line.trim() != "Commands:")
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .filter(|name| name != "help")
        .collect())
}

/// The long options `--help` lists (without `--help`, `--version`).
fn long_options(program: &Path) -> Result<Vec<String>> {
    let help = text(&output(Command::new(program).arg("--help"))?.stdout);
    Ok(help
        .split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches([',', '.', ')']).to_owned())
        .filter(|w| w != "--help" && w != "--version")
        .collect())
}

#[test]
fn completions_and_man_pages_name_every_subcommand() -> Result<()> {
    let dir = temp();
    let completions = dir.path().join("completions");
    let man = dir.path().join("man");
    // A page of another program already in the folder (a system man folder, say): untouched.
    std::fs::create_dir(&man)?;
    let other = man.join("other.1");
    std::fs::write(&other, ".TH other 1\n")?;
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o644))?;
    for generator in ["p11trace-query-docs", "p11trace-recorder-docs"] {
        for (kind, out) in [("completions", &completions), ("man", &man)] {
            run_ok(
                Command::new(bin(generator)).arg(kind).arg(out),
                Duration::from_secs(60),
            )?;
        }
    }
    let read = |path: PathBuf| {
        std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))
    };
    let query = bin("p11trace-query");
    let commands = subcommands(&query)?;
    for expected in [
        "import", "analyze", "sql", "compare", "diff", "audit", "archive", "verify",
    ] {
        ensure!(
            commands.iter().any(|c| c == expected),
            "{expected} not in {commands:?}"
        );
    }
    let page = read(man.join("p11trace-query.1"))?;
    ensure!(page.contains(".TH p11trace-query 1"), "{page}");
    for shell in [
        "p11trace-query.bash",
        "_p11trace-query",
        "p11trace-query.fish",
    ] {
        let script = read(completions.join(shell))?;
        for command in &commands {
            ensure!(script.contains(command.as_str()), "{shell} lacks {command}");
        }
    }
    for command in &commands {
        let sub = read(man.join(format!("p11trace-query-{command}.1")))?;
        ensure!(
            sub.contains(&format!(".TH p11trace-query-{command} 1")),
            "man page of {command}"
        );
        // The main page lists it (clap_mangen escapes dashes as \-).
        ensure!(
            page.contains(&command.replace('-', "\\-")),
            "p11trace-query.1 lacks {command}"
        );
    }
    let analyze = read(man.join("p11trace-query-analyze.1"))?;
    ensure!(
        analyze.contains("slow\\-floor") && analyze.contains("Examples"),
        "{analyze}"
    );

    // The recorder: every subcommand it has (if any) and every option it takes.
    let recorder = bin("p11trace-recorder");
    let page = read(man.join("p11trace-recorder.1"))?;
    ensure!(page.contains(".TH p11trace-recorder 1"), "{page}");
    let bash = read(completions.join("p11trace-recorder.bash"))?;
    for command in subcommands(&recorder)? {
        ensure!(
            bash.contains(command.as_str()),
            "recorder completions lack {command}"
        );
        ensure!(
            man.join(format!("p11trace-recorder-{command}.1")).exists(),
            "no man page of recorder {command}"
        );
    }
    let options = long_options(&recorder)?;
    ensure!(options.iter().any(|o| o == "--dataset"), "{options:?}");
    for option in &options {
        ensure!(
            bash.contains(option.as_str()),
            "recorder completions lack {option}"
        );
        ensure!(
            page.contains(&option.replace('-', "\\-")),
            "recorder man page lacks {option}"
        );
    }
    // Private, as everything we write; what we did not write keeps its mode.
    for file in std::fs::read_dir(&man)?.chain(std::fs::read_dir(&completions)?) {
        let file = file?;
        let mode = file.metadata()?.permissions().mode();
        if file.path() == other {
            ensure!(mode & 0o777 == 0o644, "other.1 was made {mode:o}");
        } else {
            ensure!(mode & 0o077 == 0, "{}: {mode:o}", file.path().display());
        }
    }
    // A usage error of the generator.
    let bad = output(Command::new(bin("p11trace-query-docs")).arg("manual"))?;
    ensure!(bad.status.code() == Some(2) && text(&bad.stderr).lines().count() == 1);
    Ok(())
}

/// Exit `code` with exactly one line on stderr that contains every one of `needles`.
fn one_line(output: &Output, code: i32, needles: &[&str]) -> Result<()> {
    let stderr = text(&output.stderr);
    ensure!(
        output.status.code() == Some(code),
        "{:?}: {stderr}",
        output.status
    );
    ensure!(stderr.lines().count() == 1, "not one line: {stderr}");
    for needle in needles {
        ensure!(stderr.contains(needle), "`{needle}` not in: {stderr}");
    }
    Ok(())
}

#[test]
fn errors_are_one_line_exit_1_for_input_and_2_for_usage() -> Result<()> {
    let query = bin("p11trace-query");
    let recorder = bin("p11trace-recorder");
    // Usage errors: 2, one line naming what was wrong.
    one_line(
        &output(Command::new(&query).args(["analyze", "--no-such-flag"]))?,
        2,
        &["p11trace-query: error:", "--no-such-flag"],
    )?;
    one_line(
        &output(Command::new(&query).args(["analyze", "x", "--format", "yaml"]))?,
        2,
        &["yaml", "--format"],
    )?;
    one_line(
        &output(Command::new(&recorder).args(["--dataset", "d", "--roll-rows", "many"]))?,
        2,
        &["p11trace-recorder: error:", "--roll-rows", "many"],
    )?;
    one_line(
        &output(Command::new(&recorder).arg("--no-such-flag"))?,
        2,
        &["--no-such-flag"],
    )?;
    // Input errors: 1, one line naming the file.
    let dir = temp();
    let missing = dir.path().join("no-such-input.parquet");
    let missing = missing.to_str().context("path")?;
    for command in ["analyze", "audit"] {
        one_line(
            &output(Command::new(&query).args([command, missing]))?,
            1,
            &["p11trace-query: error:", "no-such-input.parquet"],
        )?;
    }
    one_line(
        &output(Command::new(&query).args(["sql", "SELECT 1", missing]))?,
        1,
        &["no-such-input.parquet"],
    )?;
    // A SQL error (polars' messages span lines) is still one line.
    one_line(
        &output(Command::new(&query).args([
            "sql",
            "SELECT no_such_column FROM calls",
            corpus("pt-list-slots.log").to_str().context("path")?,
        ]))?,
        1,
        &["no_such_column"],
    )?;
    // The recorder: a dataset folder it cannot create.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"")?;
    let dataset = blocker.join("dataset");
    let refused = output(
        Command::new(&recorder)
            .arg("--dataset")
            .arg(&dataset)
            .arg("--socket")
            .arg(dir.path().join("r.sock")),
    )?;
    one_line(&refused, 1, &["p11trace-recorder: error:", "file/dataset"])?;
    // The cause once, not twice.
    let stderr = text(&refused.stderr);
    ensure!(stderr.matches("Not a directory").count() == 1, "{stderr}");
    Ok(())
}

#[test]
fn progress_and_colour_only_on_a_terminal_and_quiet_silences_the_notes() -> Result<()> {
    let query = bin("p11trace-query");
    let log = corpus("pt-err-wrong-pin.log");
    let log = log.to_str().context("path")?;
    let dir = temp();
    // Off a terminal: the import's summary is its one line, no bar drawn.
    let out = dir.path().join("a.parquet");
    let imported = run_ok(
        Command::new(&query).args(["import", log, "-o"]).arg(&out),
        Duration::from_secs(60),
    )?;
    let stderr = text(&imported.stderr);
    ensure!(
        stderr.lines().count() == 1 && stderr.contains("imported") && !stderr.contains('\r'),
        "{stderr}"
    );
    // --quiet: nothing at all.
    let out = dir.path().join("b.parquet");
    let quiet = run_ok(
        Command::new(&query)
            .args(["import", "--quiet", log, "-o"])
            .arg(&out),
        Duration::from_secs(60),
    )?;
    ensure!(quiet.stderr.is_empty(), "{}", text(&quiet.stderr));
    let archive = dir.path().join("archive");
    let archived = run_ok(
        Command::new(&query)
            .args(["archive", "-q", log, "--to"])
            .arg(&archive),
        Duration::from_secs(60),
    )?;
    ensure!(archived.stderr.is_empty(), "{}", text(&archived.stderr));
    ensure!(
        text(&archived.stdout).contains("archived"),
        "the report is output, not a note"
    );
    // The HTML report: its "wrote" note, and with -q none.
    for (flags, noted) in [(&[][..], true), (&["-q"][..], false)] {
        let page = dir.path().join(format!("r{}.html", flags.len()));
        let made = run_ok(
            Command::new(&query)
                .arg("report")
                .args(flags)
                .args([log, "-o"])
                .arg(&page),
            Duration::from_secs(60),
        )?;
        let stderr = text(&made.stderr);
        ensure!(
            page.exists() && stderr.contains("wrote") == noted && (noted || stderr.is_empty()),
            "report {flags:?}: {stderr}"
        );
    }
    // Colour: never off a terminal.
    let plain = run_ok(
        Command::new(&query).args(["analyze", log]),
        Duration::from_secs(60),
    )?;
    ensure!(!plain.stdout.contains(&0x1b) && !plain.stderr.contains(&0x1b));
    // On a terminal (script(1) gives the command a pseudo-terminal): colour, unless NO_COLOR.
    let on_terminal = |no_colour: bool| -> Result<Vec<u8>> {
        let transcript = dir.path().join("typescript");
        let mut command = Command::new("script");
        command
            .args(["-q", "-e", "-c"])
            .arg(format!("{} analyze --quiet {log}", query.display()))
            .arg(&transcript)
            .env_remove("NO_COLOR");
        if no_colour {
            command.env("NO_COLOR", "1");
        }
        run_ok(&mut command, Duration::from_secs(60))?;
        Ok(std::fs::read(&transcript)?)
    };
    let coloured = on_terminal(false)?;
    ensure!(
        coloured.windows(2).any(|w| w == b"\x1b["),
        "no colour on a terminal"
    );
    ensure!(
        String::from_utf8_lossy(&coloured).contains("CKR_PIN_INCORRECT"),
        "{}",
        String::from_utf8_lossy(&coloured)
    );
    let monochrome = on_terminal(true)?;
    let shown = String::from_utf8_lossy(&monochrome);
    ensure!(shown.contains("CKR_PIN_INCORRECT"), "{shown}");
    // script's own header line aside, no escape from us.
    ensure!(
        !shown
            .lines()
            .filter(|l| !l.starts_with("Script "))
            .any(|l| l.contains("\x1b[3")),
        "{shown}"
    );
    Ok(())
}
