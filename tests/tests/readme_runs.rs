//! The README cannot rot: every block it marks `<!-- runs: NAME -->` is run here as a newcomer
//! would paste it — in order, in one fresh home folder, with the binaries on `PATH` and
//! `target/debug/` where the README says it is — and what it printed is checked against the
//! dataset it made, read back with the real DuckDB CLI.
//!
//! The environment is the README's own preamble: a SoftHSM2 configuration of the user's
//! (`SOFTHSM2_CONF`) and a private socket folder (`P11TRACE_SOCKET`, which the shim and the
//! recorder both read), so the test never touches the machine's tokens or a recorder the
//! developer is running.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use p11trace_tests::readme::{Block, runnable_blocks};
use p11trace_tests::{counts, run, table, target_dir, text, workspace};

/// The blocks the README marks, in order. A block added, removed or renamed in the README
/// must be added here with a check of what it prints.
const BLOCKS: &[&str] = &[
    "token", "trace", "run", "analyze", "sql", "pyarrow", "polars", "report",
];

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Result<Home> {
        let dir = tempfile::Builder::new()
            .prefix("p11trace-readme")
            .tempdir()?;
        let root = dir.path();
        std::fs::create_dir_all(root.join("tokens"))?;
        std::fs::create_dir_all(root.join("target"))?;
        std::os::unix::fs::symlink(target_dir(), root.join("target/debug"))?;
        std::fs::write(
            root.join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n",
                root.display()
            ),
        )?;
        p11trace_tests::folder(&root.join("sock"), 0o700)?;
        Ok(Home { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn dataset(&self) -> std::path::PathBuf {
        self.path().join("p11trace-data")
    }

    /// Runs one block as the README's reader would: `bash -euo pipefail` or `python3`.
    fn run(&self, block: &Block) -> Result<Output> {
        let mut command = match block.lang.as_str() {
            "sh" => {
                let mut c = Command::new("bash");
                c.args(["-euo", "pipefail", "-c", &block.code]);
                c
            }
            "python" => {
                let mut c = Command::new("python3");
                c.args(["-c", &block.code]);
                c
            }
            other => anyhow::bail!("README.md:{}: cannot run a `{other}` block", block.line),
        };
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![target_dir()];
        paths.extend(std::env::split_paths(&path));
        command
            .current_dir(self.path())
            .env("HOME", self.path())
            .env("PATH", std::env::join_paths(paths)?)
            .env("SOFTHSM2_CONF", self.path().join("softhsm2.conf"))
            .env("P11TRACE_SOCKET", self.path().join("sock/p11trace.sock"))
            .env_remove("P11TRACE_MODULE")
            .env_remove("PKCS11SPY")
            .env_remove("P11TRACE_CONFIG")
            .env("NO_COLOR", "1");
        let output = run(&mut command, Duration::from_secs(300))?;
        ensure!(
            output.status.success(),
            "README.md:{}: the block `{}` failed ({}):\n{}\nstdout:\n{}\nstderr:\n{}",
            block.line,
            block.name,
            output.status,
            block.code,
            text(&output.stdout),
            text(&output.stderr)
        );
        Ok(output)
    }

    /// Calls per function in the dataset, by DuckDB.
    fn truth(&self) -> Result<BTreeMap<String, i64>> {
        counts(&format!(
            "SELECT func AS k, count(*) AS n FROM {} GROUP BY 1",
            table(&self.dataset(), "calls")
        ))
    }
}

/// `FUNC N` lines (what the Python examples print) as a map.
fn printed_counts(stdout: &str) -> BTreeMap<String, i64> {
    stdout
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let func = words.next()?;
            let n = words.next()?.parse().ok()?;
            Some((func.to_owned(), n))
        })
        .collect()
}

/// Whether some line of a table print holds both `func` and `n` as cells.
fn table_has(stdout: &str, func: &str, n: i64) -> bool {
    let n = n.to_string();
    stdout.lines().any(|line| {
        let cells: Vec<&str> = line
            .split(|c: char| c == '|' || c == '│' || c.is_whitespace())
            .filter(|c| !c.is_empty())
            .collect();
        cells.contains(&func) && cells.contains(&n.as_str())
    })
}

#[test]
fn every_runnable_block_of_the_readme_runs_as_written() -> Result<()> {
    let readme = std::fs::read_to_string(workspace().join("README.md"))?;
    let blocks = runnable_blocks(&readme)?;
    let names: Vec<&str> = blocks.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, BLOCKS, "the README's runnable blocks, in order");

    let home = Home::new()?;
    let mut truth = BTreeMap::new();
    for block in &blocks {
        let output = home.run(block)?;
        let stdout = text(&output.stdout);
        let stderr = text(&output.stderr);
        let context = || format!("README block `{}`:\n{stdout}\n{stderr}", block.name);
        match block.name.as_str() {
            "token" => ensure!(
                stdout.contains("has been initialized") || stderr.contains("has been initialized"),
                "{}",
                context()
            ),
            "trace" => {
                truth = home.truth()?;
                // pkcs11-tool made one key pair and listed the objects: two logins, two
                // processes, every call of each accounted for in the clients table.
                assert_eq!(truth.get("C_GenerateKeyPair"), Some(&1), "{}", context());
                assert_eq!(truth.get("C_Login"), Some(&2), "{}", context());
                assert!(
                    truth.get("C_FindObjectsInit").is_some_and(|n| *n >= 1),
                    "{}",
                    context()
                );
                let clients = counts(&format!(
                    "SELECT 'lost' AS k, sum(dropped + lost)::BIGINT AS n FROM {}",
                    table(&home.dataset(), "clients")
                ))?;
                assert_eq!(clients.get("lost"), Some(&0), "{}", context());
                ensure!(stderr.contains("listening on"), "{}", context());
            }
            "run" => {
                // pkcs11-tool's own listing on stdout; the analysis, then the dataset it named
                // on stderr's last line, holding the one login of that one process.
                ensure!(stdout.contains("Private Key Object; EC"), "{}", context());
                // As the README shows it: the attribute probes are expected, nothing failed.
                ensure!(
                    stderr.contains("PKCS#11 Operation Analysis")
                        && stderr.contains("Potential issues\nnone found"),
                    "{}",
                    context()
                );
                let named = stderr
                    .lines()
                    .last()
                    .and_then(|line| line.strip_prefix("dataset: "))
                    .with_context(context)?;
                let logins = counts(&format!(
                    "SELECT process AS k, count(*) AS n FROM {} WHERE func = 'C_Login' AND rv = 0 GROUP BY 1",
                    table(Path::new(named), "calls")
                ))?;
                assert_eq!(
                    logins,
                    BTreeMap::from([("pkcs11-tool".to_owned(), 1)]),
                    "{}",
                    context()
                );
            }
            "analyze" => {
                // The text report names every function called; the JSON gate passed (exit 0).
                for func in truth.keys() {
                    ensure!(
                        stdout.contains(func.as_str()),
                        "{func} missing: {}",
                        context()
                    );
                }
                ensure!(stdout.trim_end().ends_with("true"), "{}", context());
            }
            "sql" => {
                for (func, n) in &truth {
                    ensure!(
                        stdout.matches(func.as_str()).count() >= 2 && table_has(&stdout, func, *n),
                        "{func} {n} not in both tables: {}",
                        context()
                    );
                }
            }
            "pyarrow" | "polars" => {
                assert_eq!(printed_counts(&stdout), truth, "{}", context());
            }
            "report" => {
                // The page it names holds the charts and every function called; it is private.
                let page = home.path().join("p11trace-report.html");
                ensure!(stderr.contains("wrote"), "{}", context());
                let html = std::fs::read_to_string(&page)
                    .with_context(|| format!("{}: {}", page.display(), context()))?;
                for id in [
                    "latency-chart",
                    "calls-over-time-chart",
                    "session-timeline-chart",
                ] {
                    ensure!(
                        html.contains(&format!("id=\"{id}\"><svg")),
                        "#{id}: {}",
                        context()
                    );
                }
                for func in truth.keys() {
                    ensure!(
                        html.contains(&format!("<td>{func}</td>")),
                        "{func} not in the page"
                    );
                }
                let mode = std::fs::metadata(&page)?.permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "the report is private");
            }
            other => anyhow::bail!("README block `{other}` has no check here"),
        }
    }
    let dataset = home.dataset();
    let mode = std::fs::metadata(&dataset)
        .with_context(|| format!("{}", dataset.display()))?
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "the README's dataset is private");
    Ok(())
}
