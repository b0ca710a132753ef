//! A fleet in a test: recorders with their own host names and spools upload into one bucket of
//! a real S3-compatible server (moto) while traced clients run; one recorder is killed with -9
//! and restarted, one crashes between an upload and the spool's clean-up, the server stops
//! answering for a few seconds. Afterwards every call is accounted for, no row is there twice,
//! no object was overwritten with other bytes, and `p11trace-query analyze s3://…` gives what it
//! gives on a local copy of the bucket. A second test keeps the store unreachable through a
//! shutdown: the files stay in the spool, and the next start uploads them.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use p11trace_tests::fleet::*;
use p11trace_tests::prometheus;
use p11trace_tests::s3::S3Server;
use p11trace_tests::*;
use serde_json::Value;

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
    let mut recorders = [
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
        &["paced", "1500", "1"],
    )?)?;
    // The first file went into the empty spool; the next ones roll (every second) into the cap.
    recorder.wait_for("the spool is full", Duration::from_secs(20))?;
    let asked = Instant::now();
    let (status, stderr) = recorder.stop()?;
    let took = asked.elapsed();
    ensure!(status.success(), "{status}: {stderr}");
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
