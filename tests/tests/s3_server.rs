//! The S3 server fixture (`tests/src/s3.rs`) does what the object-storage tests rely on: a real
//! `moto_server` on a loopback port, a versioned bucket keeping every version of an overwritten
//! key, `upload_dir` sending a dataset's files under their relative keys and nothing hidden or
//! half-written, and a paused server that accepts connections but answers nothing until it is
//! resumed, its buckets intact.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use p11trace_tests::s3::S3Server;
use p11trace_tests::temp;

#[test]
fn the_s3_server_keeps_versions_uploads_folders_and_can_be_paused() -> Result<()> {
    let server = S3Server::start()?;
    ensure!(server.endpoint.starts_with("http://127.0.0.1:"));
    server.create_bucket("fleet", true)?;
    server.create_bucket("plain", false)?;

    let dir = temp();
    let root = dir.path();
    std::fs::create_dir_all(root.join("calls/date=2026-12-04"))?;
    std::fs::create_dir_all(root.join(".wal"))?;
    std::fs::write(root.join("calls/date=2026-12-04/part-0.parquet"), b"first")?;
    std::fs::write(
        root.join("calls/date=2026-12-04/part-1.parquet"),
        b"second!",
    )?;
    // Never uploaded: hidden files and folders, files being written.
    std::fs::write(root.join(".key"), b"secret")?;
    std::fs::write(root.join(".lock"), b"")?;
    std::fs::write(root.join(".wal/seg-0000000000.wal"), b"wal")?;
    std::fs::write(
        root.join("calls/date=2026-12-04/part-2.parquet.tmp"),
        b"half",
    )?;

    server.upload_dir(root, "fleet", "site-a/")?;
    let objects = server.objects("fleet", "site-a/")?;
    let listed: Vec<(&str, u64)> = objects.iter().map(|o| (o.key.as_str(), o.size)).collect();
    ensure!(
        listed
            == [
                ("site-a/calls/date=2026-12-04/part-0.parquet", 5),
                ("site-a/calls/date=2026-12-04/part-1.parquet", 7),
            ],
        "uploaded: {objects:?}"
    );
    ensure!(
        objects
            .iter()
            .all(|o| o.etag.len() == 32 && !o.etag.contains('"')),
        "single-part ETags are MD5 hex without quotes: {objects:?}"
    );
    ensure!(server.objects("fleet", "site-b/")?.is_empty());

    // The same folder again: a versioned bucket keeps both versions of each key, same ETag.
    server.upload_dir(root, "fleet", "site-a/")?;
    let versions = server.versions("fleet", "site-a/")?;
    ensure!(
        versions.len() == 4,
        "two versions of two keys: {versions:?}"
    );
    for object in &objects {
        let of_key: Vec<_> = versions.iter().filter(|v| v.key == object.key).collect();
        ensure!(
            of_key.len() == 2
                && of_key[0].version_id != of_key[1].version_id
                && of_key.iter().all(|v| v.etag == object.etag),
            "{object:?}: {of_key:?}"
        );
    }
    server.upload_dir(root, "plain", "")?;
    ensure!(server.objects("plain", "calls/")?.len() == 2);

    // Paused: the kernel still accepts the connection, nobody answers.
    ensure!(
        server
            .answers(Duration::from_secs(2))?
            .starts_with("HTTP/1.")
    );
    server.pause()?;
    let asked = Instant::now();
    let paused = server.answers(Duration::from_secs(2));
    ensure!(paused.is_err(), "a paused server answered: {paused:?}");
    ensure!(
        asked.elapsed() >= Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    server.resume()?;
    ensure!(server.answers(Duration::from_secs(5)).is_ok());
    ensure!(
        server.objects("fleet", "site-a/")? == objects,
        "buckets kept"
    );

    let env = server.env();
    let value = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    ensure!(value("AWS_ENDPOINT_URL") == Some(server.endpoint.as_str()));
    ensure!(value("AWS_ALLOW_HTTP") == Some("true") && value("AWS_REGION") == Some("us-east-1"));
    ensure!(value("AWS_ACCESS_KEY_ID").is_some() && value("AWS_SECRET_ACCESS_KEY").is_some());
    Ok(())
}

#[test]
fn a_dropped_server_is_gone_even_when_paused() -> Result<()> {
    let server = S3Server::start()?;
    let endpoint = server.endpoint.clone();
    server.pause()?;
    drop(server);
    let port = endpoint.rsplit(':').next().unwrap_or_default();
    let refused = std::net::TcpStream::connect(format!("127.0.0.1:{port}"));
    ensure!(refused.is_err(), "{endpoint} still accepts connections");
    Ok(())
}
