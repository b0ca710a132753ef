//! `p11trace-query report`: the HTML page of real pkcs11-tool sessions through the shim, opened
//! in Debian's real `/usr/bin/chromium` (headless). The page loads with no console error, every
//! chart is in the DOM after load, a screenshot of it is far from blank, nothing in it points at
//! the network, and a process named like markup (`<script>alert(1`) is shown as text. With two
//! inputs the compare view is there too; bad input exits 1 and usage errors 2.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use p11trace_tests::*;

const CHROMIUM: &str = "/usr/bin/chromium";
/// What the shim records as the crafted process' name (`/proc/self/comm`: 15 bytes).
const CRAFTED: &str = "<script>alert(1";

/// A session of pkcs11-tool jobs through the shim: an EC key pair made, a signature, the
/// objects listed, one wrong PIN; and (with `crafted`) a copy of pkcs11-tool named like markup.
fn record(traced: &mut Traced, crafted: Option<&Path>) -> Result<()> {
    let long = Duration::from_secs(120);
    run_ok(
        &mut traced.pkcs11_tool(&login(&[
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--id",
            "01",
            "--label",
            "report-ec",
        ])),
        long,
    )?;
    traced.sign_ecdsa("01", long)?;
    run_ok(&mut traced.pkcs11_tool(&["--list-objects"]), long)?;
    let wrong = run(
        &mut traced.pkcs11_tool(&["--login", "--pin", "Not-The-Pin", "--list-objects"]),
        long,
    )?;
    ensure!(!wrong.status.success(), "a wrong PIN must be refused");
    if let Some(program) = crafted {
        let mut command = traced.token.command(program);
        command.arg("--module").arg(shim()).args([
            "--token-label",
            &traced.token.label,
            "--list-objects",
        ]);
        traced.trace(&mut command);
        run_ok(&mut command, long)?;
    }
    traced.recorder.stop()?;
    Ok(())
}

/// A copy of pkcs11-tool in `dir` whose name is markup.
fn crafted_tool(dir: &Path) -> Result<PathBuf> {
    let path = dir.join(CRAFTED);
    let real = which("pkcs11-tool")?;
    std::fs::copy(&real, &path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

fn which(program: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("{program} is not on PATH"))
}

/// `p11trace-query report INPUTS -o OUT`, which must succeed.
fn report(inputs: &[&Path], out: &Path) -> Result<String> {
    let mut command = Command::new(query_bin());
    command.arg("report").args(inputs).arg("-o").arg(out);
    let output = run(&mut command, Duration::from_secs(120))?;
    ensure!(
        output.status.success(),
        "report failed: {}",
        text(&output.stderr)
    );
    Ok(std::fs::read_to_string(out)?)
}

/// Headless chromium on `page` with `args`; its own profile, so runs do not share one.
fn chromium(page: &Path, args: &[&str]) -> Result<Output> {
    let profile = tempfile::tempdir()?;
    let output = run(
        Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--enable-logging=stderr",
                "--v=0",
                "--no-first-run",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(args)
            .arg(format!("file://{}", page.display())),
        Duration::from_secs(120),
    )?;
    ensure!(
        output.status.success(),
        "chromium failed: {}",
        text(&output.stderr)
    );
    let stderr = text(&output.stderr);
    let console: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
        .collect();
    ensure!(console.is_empty(), "console errors: {console:?}");
    Ok(output)
}

/// The element with `id="id"` holds an `<svg>` with drawn shapes, before its end.
fn chart_in(dom: &str, id: &str) -> Result<()> {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .with_context(|| format!("no element #{id} in the DOM"))?;
    let figure = &dom[at..];
    let end = figure.find("</figure>").context("the figure ends")?;
    let figure = &figure[..end];
    ensure!(figure.contains("<svg"), "#{id} holds no <svg>");
    let shapes = ["<rect", "<circle", "<polyline", "<line"]
        .iter()
        .map(|s| figure.matches(s).count())
        .sum::<usize>();
    ensure!(shapes > 20, "#{id} draws only {shapes} shapes");
    Ok(())
}

/// No `src=`/`href=` to a URL, no stylesheet or import: the page fetches nothing.
fn fetches_nothing(html: &str) -> Result<()> {
    let lower = html.to_lowercase();
    for attribute in ["src=", "href="] {
        for (at, _) in lower.match_indices(attribute) {
            let value = lower[at + attribute.len()..].trim_start_matches(['"', '\'']);
            ensure!(
                !(value.starts_with("http:")
                    || value.starts_with("https:")
                    || value.starts_with("//")),
                "the page fetches {}",
                &html[at..(at + 80).min(html.len())]
            );
        }
    }
    for fetch in ["<link", "@import", "url(", "<script", "<iframe", "<img"] {
        ensure!(!lower.contains(fetch), "the page holds {fetch}");
    }
    Ok(())
}

#[test]
fn a_traced_session_renders_in_chromium_with_every_chart_and_escaped_names() -> Result<()> {
    let mut traced = Traced::new("report")?;
    let tools = tempfile::tempdir()?;
    record(&mut traced, Some(&crafted_tool(tools.path())?))?;
    let out_dir = tempfile::tempdir()?;
    let page = out_dir.path().join("report.html");
    let html = report(&[&traced.recorder.dataset], &page)?;

    // Written whole, 0600, nothing left beside it.
    let mode = std::fs::metadata(&page)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "report.html mode {mode:o}");
    let beside: Vec<_> = std::fs::read_dir(out_dir.path())?.collect();
    assert_eq!(beside.len(), 1, "a temporary file was left: {beside:?}");

    // The markup in the process name is text; nothing is fetched.
    fetches_nothing(&html)?;
    assert!(
        !html.contains(CRAFTED),
        "the crafted name is in the page raw"
    );
    assert!(
        html.contains("&lt;script&gt;alert(1"),
        "the crafted process is shown, escaped"
    );

    // The page in a real browser: loaded, every chart in the DOM.
    let dom = text(&chromium(&page, &["--dump-dom"])?.stdout);
    for id in [
        "latency-chart",
        "calls-over-time-chart",
        "session-timeline-chart",
    ] {
        chart_in(&dom, id)?;
    }
    for section in ["summary", "functions", "errors", "processes", "sessions"] {
        assert!(dom.contains(&format!("id=\"{section}\"")), "no #{section}");
    }
    assert!(
        !dom.contains("id=\"compare\""),
        "one input: no compare view"
    );
    assert!(
        !dom.contains("<script"),
        "a script element came out of the data"
    );
    // The crafted process is a text node: its lane in the timeline and its row in the table.
    assert!(
        dom.matches("&lt;script&gt;alert(1").count() >= 2,
        "crafted process shown"
    );
    // What pkcs11-tool is known to call, in the latency chart's labels.
    let latency = &dom[dom.find("id=\"latency-chart\"").unwrap_or(0)..];
    let latency = &latency[..latency.find("</figure>").unwrap_or(latency.len())];
    for func in [
        "C_Sign",
        "C_GenerateKeyPair",
        "C_OpenSession",
        "C_Login",
        "C_FindObjects",
    ] {
        assert!(latency.contains(func), "{func} not in the latency chart");
    }
    // The wrong PIN in the error table, with its function.
    let errors = &dom[dom.find("id=\"errors\"").unwrap_or(0)..];
    let errors = &errors[..errors.find("</section>").unwrap_or(errors.len())];
    assert!(
        errors.contains("<td>C_Login</td><td>CKR_PIN_INCORRECT</td>"),
        "the wrong PIN's C_Login is not in the error table: {errors}"
    );
    // Failures and the protocol's idioms counted as analyze counts them, and told apart.
    let dataset = traced.recorder.dataset.to_str().context("path")?;
    let analysis = query_output(&["analyze", dataset, "--format", "json"])?;
    let analysis: serde_json::Value = serde_json::from_slice(&analysis.stdout)?;
    let summary = &analysis["summary"];
    let (failed, expected) = (
        summary["failed_operations"].as_u64().context("failed")?,
        summary["expected_nonok_operations"]
            .as_u64()
            .context("expected")?,
    );
    assert!(failed >= 1 && expected >= 1, "{summary}");
    for (value, label) in [
        (failed, "failed"),
        (expected, "expected non-OK (probes, retried size queries)"),
    ] {
        let card = format!(">{value}</b><span>{label}</span>");
        assert!(dom.contains(&card), "no card {card}");
    }
    assert!(
        errors.contains("<td>CKR_ATTRIBUTE_TYPE_INVALID</td>") && errors.contains("<td>yes</td>"),
        "the attribute probes are in the error table, marked expected: {errors}"
    );
    // The timeline's legend: the phases of a session.
    let legend = &dom[dom
        .find("id=\"timeline-legend\"")
        .context("no timeline legend")?..];
    let legend = &legend[..legend.find("</p>").unwrap_or(legend.len())];
    for phase in [
        "open",
        "login / logout",
        "operation",
        "close / finalize",
        "failed call",
    ] {
        assert!(
            legend.contains(&format!("</i>{phase}</span>")),
            "legend {phase}: {legend}"
        );
    }

    // A screenshot: decoded, many colours, far from blank.
    let shot = out_dir.path().join("shot.png");
    chromium(
        &page,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,2000",
        ],
    )?;
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot)?));
    let mut reader = decoder.read_info()?;
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels)?;
    assert_eq!((info.width, info.height), (1280, 2000));
    let channels = info.color_type.samples();
    let mut colours = HashSet::new();
    let mut background = 0usize;
    for pixel in pixels[..info.buffer_size()].chunks(channels) {
        colours.insert(pixel[..3.min(channels)].to_vec());
        if pixel[..3.min(channels)].iter().all(|&c| c >= 245) {
            background += 1;
        }
    }
    let total = (info.width * info.height) as usize;
    assert!(
        colours.len() > 50,
        "only {} distinct colours",
        colours.len()
    );
    assert!(
        background < total * 97 / 100,
        "{background} of {total} pixels are blank"
    );
    Ok(())
}

#[test]
fn two_inputs_add_the_compare_view_and_the_gate() -> Result<()> {
    let mut first = Traced::new("report-a")?;
    record(&mut first, None)?;
    let mut second = Traced::new("report-b")?;
    record(&mut second, None)?;
    let out_dir = tempfile::tempdir()?;
    let page = out_dir.path().join("compare.html");
    let html = report(&[&first.recorder.dataset, &second.recorder.dataset], &page)?;
    fetches_nothing(&html)?;
    let dom = text(&chromium(&page, &["--dump-dom"])?.stdout);
    chart_in(&dom, "compare-chart")?;
    let compare = &dom[dom.find("id=\"compare\"").context("no #compare")?..];
    for func in ["C_Sign", "C_GenerateKeyPair", "C_Login"] {
        assert!(
            compare.contains(&format!("<td>{func}</td>")),
            "{func} not compared"
        );
    }
    // Both sides are SoftHSM2: the names are told apart.
    assert!(
        compare.contains("(A)") && compare.contains("(B)"),
        "sides not named apart"
    );
    // The analysis covers both inputs: two wrong PINs.
    assert!(dom.contains("<td>C_Login</td><td>CKR_PIN_INCORRECT</td><td class=\"n\">0x000000A0</td><td class=\"n\">2</td>"), "errors of both inputs");

    // The gate: what `diff A B` decides, its totals, its exit status and its notable rows.
    let (a, b) = (&first.recorder.dataset, &second.recorder.dataset);
    let diff = query_output(&[
        "diff",
        a.to_str().context("path")?,
        b.to_str().context("path")?,
        "--format",
        "json",
    ])?;
    let verdicts: serde_json::Value = serde_json::from_slice(&diff.stdout)?;
    let s = &verdicts["summary"];
    let gate = &dom[dom.find("id=\"gate\"").context("no #gate")?..];
    let totals = format!(
        "{} row(s); {} regressed, {} improved, {} unchanged",
        s["entries"], s["regressed"], s["improved"], s["unchanged"]
    );
    assert!(gate.contains(&totals), "{totals} not in {gate}");
    let exit = format!("diff would exit {}", diff.status.code().unwrap_or(-1));
    assert!(gate.contains(&exit), "{exit} not in {gate}");
    let notable = verdicts["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .filter(|e| {
            e["verdict"] != "unchanged"
                || e["rv_verdict"] != "unchanged"
                || e["count_verdict"] != "unchanged"
                || e["presence"] != "both"
        })
        .count();
    assert!(
        notable > 0,
        "two small recordings: some rows have too few calls"
    );
    assert_eq!(
        gate.matches("class=\"gate-row\"").count(),
        notable,
        "{gate}"
    );
    Ok(())
}

#[test]
fn bad_inputs_and_usage_exit_1_and_2_with_one_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("r.html");
    let missing = dir.path().join("no-such-dataset");
    let output = query_output(&[
        "report",
        missing.to_str().unwrap_or_default(),
        "-o",
        out.to_str().unwrap_or_default(),
    ])?;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("no-such-dataset"),
        "the input is named: {stderr}"
    );
    assert!(!out.exists());

    let folder = dir.path().join("no-such-folder").join("r.html");
    let fixture = corpus_logs().into_iter().next().context("a spy log")?;
    let output = query_output(&[
        "report",
        fixture.to_str().unwrap_or_default(),
        "-o",
        folder.to_str().unwrap_or_default(),
    ])?;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("no-such-folder"),
        "{}",
        text(&output.stderr)
    );

    let output = query_output(&["report", fixture.to_str().unwrap_or_default()])?;
    assert_eq!(output.status.code(), Some(2), "no -o is a usage error");
    let help = query(&["report", "--help"])?;
    assert!(text(&help.stdout).contains("p11trace-query report dataset/ -o report.html"));
    Ok(())
}
