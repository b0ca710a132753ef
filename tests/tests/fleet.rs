//! A fleet in a test: recorders with their own host names and spools upload into one bucket of
//! a real S3-compatible server (moto) while traced clients run; one recorder is killed with -9
//! and restarted, one crashes between an upload and the spool's clean-up, the server stops
//! answering for a few seconds. Afterwards every call is accounted for, no row is there twice,
//! no object was overwritten with other bytes, and `p11trace-query analyze s3://…` gives what it
//! gives on a local copy of the bucket. A second test keeps the store unreachable through a
//! shutdown: the files stay in the spool, and the next start uploads them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use p11trace_tests::prometheus;
use p11trace_tests::s3::S3Server;
use p11trace_tests::*;
use serde_json::Value;

const BUCKET: &str = "fleet";
const PREFIX: &str = "ds";

fn url() -> String {
    format!("s3://{BUCKET}/{PREFIX}")
}

/// One host: its own spool and socket (kept across restarts) and the recorder's arguments.
struct Host {
    name: String,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl Host {
    fn new(name: &str, extra: &[&str]) -> Host {
        Host {
            name: name.to_owned(),
            dir: temp(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("sock").join("r.sock")
    }

    /// Starts (or restarts) this host's recorder against `server`, with `env` besides.
    fn start(&self, server: &S3Server, env: &[(&str, &str)]) -> Result<Recorder> {
        let spool = self.spool();
        let mut args = vec![
            "--spool",
            spool.to_str().context("spool path")?,
            "--host",
            &self.name,
            "--roll-secs",
            "1",
        ];
        args.extend(self.extra.iter().map(String::as_str));
        let mut launch = Launch::at(temp(), PathBuf::from(url()), self.socket()).args(&args);
        for (key, value) in server.env() {
            launch = launch.env(&key, &value);
        }
        for (key, value) in env {
            launch = launch.env(key, value);
        }
        launch.start()
    }

    /// The finished files still in the spool.
    fn spooled(&self) -> Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for table in ["calls", "clients"] {
            let folder = self.spool().join(table);
            if folder.is_dir() {
                files.extend(parquet_files_below(&folder)?);
            }
        }
        Ok(files)
    }
}

fn parquet_files_below(folder: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(folder)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(parquet_files_below(&path)?);
        } else if path.extension().is_some_and(|e| e == "parquet") {
            out.push(path);
        }
    }
    Ok(out)
}

/// `p11trace-query ARGS` with the server's credentials and endpoint.
fn query_s3(server: &S3Server, args: &[&str]) -> Result<Output> {
    let output = Command::new(query_bin())
        .args(args)
        .envs(server.env())
        .output()?;
    ensure!(
        output.status.success(),
        "p11trace-query {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

/// Stops a recorder with SIGTERM; it must exit 0 with nothing left in its spool.
fn stop_uploaded(recorder: &mut Recorder, host: &Host) -> Result<()> {
    let (status, stderr) = recorder.stop()?;
    ensure!(status.success(), "{}: {status}: {stderr}", host.name);
    let summary = recorder.summary().context("no summary line")?;
    ensure!(
        summary.get("left_in_spool") == 0 && summary.get("uploaded") > 0,
        "{}: {stderr}",
        host.name
    );
    ensure!(
        host.spooled()?.is_empty(),
        "{}: files left in the spool",
        host.name
    );
    Ok(())
}

/// Every object is a part file of a known host in the layout's folders, and every version of
/// a key holds the same bytes (a retry replaced an object with itself, never with others).
fn check_objects(server: &S3Server, hosts: &[&str]) -> Result<BTreeMap<String, usize>> {
    let mut per_host: BTreeMap<String, usize> = BTreeMap::new();
    let mut etags: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for version in server.versions(BUCKET, &format!("{PREFIX}/"))? {
        etags
            .entry(version.key.clone())
            .or_default()
            .push(version.etag);
    }
    for object in server.objects(BUCKET, &format!("{PREFIX}/"))? {
        let parts: Vec<&str> = object.key.split('/').collect();
        let [prefix, table, date, name] = parts.as_slice() else {
            anyhow::bail!("unexpected key {}", object.key);
        };
        ensure!(
            *prefix == PREFIX && ["calls", "clients"].contains(table),
            "{}",
            object.key
        );
        ensure!(
            date.starts_with("date=") && date.len() == 15,
            "{}",
            object.key
        );
        let host = hosts
            .iter()
            .find(|h| name.starts_with(&format!("part-{h}-")))
            .with_context(|| format!("{}: no host's name", object.key))?;
        *per_host.entry(host.to_string()).or_default() += 1;
        let versions = &etags[&object.key];
        ensure!(
            versions.iter().all(|e| *e == versions[0]),
            "{} was overwritten with other bytes: {versions:?}",
            object.key
        );
    }
    Ok(per_host)
}

/// Downloads the bucket's dataset into a local folder and checks the accounting on it; then
/// `analyze s3://…` must equal `analyze` of that copy.
fn check_dataset(server: &S3Server, reports: &[Value]) -> Result<tempfile::TempDir> {
    let copy = temp();
    server.download_dir(BUCKET, &format!("{PREFIX}/"), copy.path())?;
    check_invariant(copy.path(), reports)?;
    let remote = query_s3(server, &["analyze", &url(), "--format", "json"])?;
    let local = query(&[
        "analyze",
        copy.path().to_str().context("path")?,
        "--format",
        "json",
    ])?;
    let remote: Value = serde_json::from_slice(&remote.stdout)?;
    let local: Value = serde_json::from_slice(&local.stdout)?;
    let differing: Vec<&String> = local
        .as_object()
        .context("analysis")?
        .iter()
        .filter(|(key, value)| remote.get(key.as_str()) != Some(value))
        .map(|(key, _)| key)
        .collect();
    ensure!(
        differing.is_empty(),
        "analyze s3:// differs from analyze of a copy in {differing:?}: {} vs {}",
        remote[differing[0]],
        local[differing[0]]
    );
    let made: i64 = reports.iter().filter_map(|r| r["calls"].as_i64()).sum();
    let total = remote["summary"]["total_operations"]
        .as_i64()
        .context("total")?;
    ensure!(
        total > 0 && total <= made + 64 * reports.len() as i64,
        "{total} of {made}"
    );
    Ok(copy)
}

fn reports_of(clients: Vec<Child>) -> Result<Vec<Value>> {
    clients.into_iter().map(report).collect()
}

#[test]
fn three_hosts_upload_into_one_bucket_through_a_kill_a_crash_and_an_outage() -> Result<()> {
    let server = S3Server::start()?;
    server.create_bucket(BUCKET, true)?;
    let token = Token::new("fleet")?;
    // web-1 uploads its files in 4 KiB parts (multipart uploads; their ETags have the
    // multipart form) and serves its metrics.
    let metrics = format!("127.0.0.1:{}", prometheus::free_port()?);
    let hosts = [
        Host::new(
            "web-1",
            &["--upload-part-bytes", "4096", "--metrics", &metrics],
        ),
        Host::new("web-2", &[]),
        Host::new("db-1", &[]),
    ];
    let mut recorders = vec![
        hosts[0].start(&server, &[])?,
        hosts[1].start(&server, &[])?,
        // Crashes right after its second verified upload, before the spool forgets the file.
        hosts[2].start(&server, &[("P11TRACE_RECORDER_CRASH_AT", "after-upload:2")])?,
    ];
    let mut clients = Vec::new();
    for host in &hosts {
        clients.push(spawn_clients(
            &token,
            &host.socket(),
            2,
            &["paced", "2500", "1"],
        )?);
    }
    // web-2 is killed with -9 mid-run and restarted on its spool.
    std::thread::sleep(Duration::from_millis(1200));
    recorders[1].kill()?;
    std::thread::sleep(Duration::from_millis(300));
    recorders[1] = hosts[1].start(&server, &[])?;
    // The store stops answering for a few seconds (SIGSTOP: connections hang).
    // Meanwhile files pile up in the spools: the upload backlog shows it.
    server.pause()?;
    std::thread::sleep(Duration::from_secs(3));
    let during = prometheus::scrape(&metrics)?;
    std::thread::sleep(Duration::from_secs(1));
    server.resume()?;
    ensure!(
        during.value("p11trace_upload_backlog_files")? >= 1.0
            && during.value("p11trace_spool_bytes")? > 0.0,
        "web-1's backlog while the store was away: {:?}",
        during.series("p11trace_upload_backlog_files")
    );
    // db-1 crashed after an upload; it comes back on its spool and uploads that file again.
    let (status, stderr) = recorders[2].wait()?;
    ensure!(
        !status.success() && stderr.contains("crash injected at after-upload"),
        "db-1 should have crashed after an upload: {status} {stderr}"
    );
    recorders[2] = hosts[2].start(&server, &[])?;
    let per_host_reports: Vec<Vec<Value>> =
        clients.into_iter().map(reports_of).collect::<Result<_>>()?;
    let reports: Vec<Value> = per_host_reports.concat();
    for (recorder, host) in recorders.iter_mut().zip(&hosts) {
        stop_uploaded(recorder, host)?;
    }
    let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    let per_host = check_objects(&server, &names)?;
    ensure!(per_host.len() == 3, "every host uploaded: {per_host:?}");
    let objects = server.objects(BUCKET, &format!("{PREFIX}/"))?;
    // Every file of `host` over 4 KiB has a multipart ETag (there is at least one such file).
    let multipart = |host: &str| {
        let large: Vec<_> = objects
            .iter()
            .filter(|o| o.key.contains(&format!("/part-{host}-")) && o.size > 4096)
            .collect();
        !large.is_empty() && large.iter().all(|o| o.etag.contains('-'))
    };
    ensure!(
        multipart("web-1") && !multipart("web-2"),
        "web-1's files over 4 KiB are multipart uploads, web-2's plain: {objects:?}"
    );
    // db-1's re-upload after the crash: one key holds two versions, with the same bytes.
    let versions = server.versions(BUCKET, &format!("{PREFIX}/"))?;
    ensure!(
        versions.len() > objects.len(),
        "the file uploaded before the crash should have been uploaded again"
    );
    let copy = check_dataset(&server, &reports)?;
    // The multipart ETags are S3's md5-of-part-md5s of the bytes read back: what the uploader
    // checks before it lets a file go.
    let script = "import hashlib,sys\nfor path, etag in zip(sys.argv[1::2], sys.argv[2::2]):\n    data = open(path, 'rb').read()\n    parts = [data[i:i + 4096] for i in range(0, len(data), 4096)]\n    got = hashlib.md5(b''.join(hashlib.md5(p).digest() for p in parts)).hexdigest() + '-' + str(len(parts))\n    assert got == etag, (path, got, etag)\n";
    let mut check = Command::new("python3");
    check.args(["-c", script]);
    for object in objects.iter().filter(|o| o.etag.contains('-')) {
        let relative = object
            .key
            .strip_prefix(&format!("{PREFIX}/"))
            .context("key")?;
        check.arg(copy.path().join(relative)).arg(&object.etag);
    }
    let checked = check.output()?;
    ensure!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    // The host column says which recorder wrote each row: each host's rows are its own
    // clients' rows, and the hosts' counts add up to the fleet's.
    let by_host = counts(&format!(
        "SELECT host AS k, count(*) AS n FROM {} GROUP BY 1",
        table(copy.path(), "calls")
    ))?;
    let tallies = tallies(copy.path())?;
    for (host, reports) in names.iter().zip(&per_host_reports) {
        let rows: i64 = reports
            .iter()
            .filter_map(|r| r["pid"].as_i64())
            .map(|pid| tallies.get(&pid).map_or(0, |t| t.rows))
            .sum();
        ensure!(
            by_host.get(*host) == Some(&rows),
            "{host}: {rows} rows of its clients, {by_host:?} by host"
        );
    }
    ensure!(by_host.len() == 3, "{by_host:?}");
    Ok(())
}

#[test]
fn a_store_unreachable_through_a_shutdown_leaves_the_files_in_the_spool_for_the_next_start()
-> Result<()> {
    let server = S3Server::start()?;
    server.create_bucket(BUCKET, false)?;
    let token = Token::new("outage")?;
    // A one-byte spool cap: while nothing can be uploaded, finished files wait in memory and
    // in the log, not in the spool, until the shutdown stores them there.
    let host = Host::new(
        "edge-1",
        &["--shutdown-timeout", "2", "--spool-max-bytes", "1"],
    );
    let mut recorder = host.start(&server, &[])?;
    server.pause()?;
    let reports = reports_of(spawn_clients(
        &token,
        &host.socket(),
        2,
        &["paced", "400", "1"],
    )?)?;
    std::thread::sleep(Duration::from_millis(1500));
    let asked = Instant::now();
    let (status, stderr) = recorder.stop()?;
    let took = asked.elapsed();
    ensure!(status.success(), "{status}: {stderr}");
    ensure!(
        stderr.contains("the spool is full"),
        "the cap should have held files back: {stderr}"
    );
    ensure!(
        took < Duration::from_secs(15),
        "--shutdown-timeout 2 should bound the stop: {took:?}"
    );
    let summary = recorder.summary().context("no summary")?;
    ensure!(summary.get("left_in_spool") > 0, "{stderr}");
    ensure!(stderr.contains("stay in the spool"), "{stderr}");
    let left = host.spooled()?;
    ensure!(
        left.len() as u64 == summary.get("left_in_spool"),
        "{left:?} vs {stderr}"
    );
    server.resume()?;
    // The next start uploads what the last one left, then has nothing more to do.
    let mut again = host.start(&server, &[])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !host.spooled()?.is_empty() {
        ensure!(Instant::now() < deadline, "the spool was not emptied");
        std::thread::sleep(Duration::from_millis(200));
    }
    stop_uploaded(&mut again, &host)?;
    check_objects(&server, &["edge-1"])?;
    check_dataset(&server, &reports)?;
    Ok(())
}
