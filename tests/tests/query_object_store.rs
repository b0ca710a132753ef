//! `p11trace-query` reads a dataset in object storage (`s3://BUCKET/PREFIX`, a real moto
//! server) as it reads a copy of it: `sql`, `compare`, `diff` and `archive` (whose digest chain
//! head, a hash over every archived file, must be the same) give what they give on the local
//! folder; `analyze` is checked in `fleet.rs`. What cannot work is refused clearly: pruning
//! objects, a missing bucket, the store-only recorder options with a folder, a spool of another
//! URL.

use std::process::Output;

use anyhow::{Context, Result, ensure};
use p11trace_tests::fleet::{BUCKET, Host};
use p11trace_tests::s3::S3Server;
use p11trace_tests::*;

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A traced dataset (a key pair made, objects listed), uploaded to the bucket as `PREFIX/`.
fn uploaded(server: &S3Server, prefix: &str) -> Result<Traced> {
    let mut traced = Traced::new("objstore")?;
    let keygen = ["--keypairgen", "--key-type", "EC:prime256v1", "--id", "01"];
    run_ok(
        &mut traced.pkcs11_tool(&login(&keygen)),
        std::time::Duration::from_secs(60),
    )?;
    run_ok(
        &mut traced.pkcs11_tool(&login(&["--list-objects"])),
        std::time::Duration::from_secs(60),
    )?;
    traced.recorder.stop()?;
    server.upload_dir(&traced.recorder.dataset, BUCKET, &format!("{prefix}/"))?;
    Ok(traced)
}

#[test]
fn every_query_command_reads_a_bucket_as_it_reads_a_copy() -> Result<()> {
    let server = S3Server::start()?;
    server.create_bucket(BUCKET, false)?;
    let traced = uploaded(&server, "one")?;
    let local = traced.recorder.dataset.to_str().context("path")?.to_owned();
    let url = format!("s3://{BUCKET}/one");
    let sql = "SELECT func, count(*) AS n FROM calls GROUP BY 1 ORDER BY 1";
    ensure!(
        text(&server.query(&["sql", sql, &url])?) == text(&server.query(&["sql", sql, &local])?),
        "sql differs"
    );
    // compare: the bucket against the copy, and the copy against itself, named alike.
    let compare = |a: &str| -> Result<String> {
        let out = server.query(&[
            "compare", "--name-a", "a", "--name-b", "b", "--format", "json", a, &local,
        ])?;
        Ok(text(&out))
    };
    ensure!(compare(&url)? == compare(&local)?, "compare differs");
    // diff names its sides by their paths: the same report once the name is put back.
    let diff = |a: &str| -> Result<String> {
        let out = server.query_output(&["diff", "--format", "json", a, &local])?;
        ensure!(
            out.status.code() == Some(0),
            "diff of a dataset with itself: {out:?}"
        );
        Ok(text(&out).replacen(&format!("\"{a}\""), "\"BASELINE\"", 1))
    };
    ensure!(diff(&url)? == diff(&local)?, "diff differs");
    // archive: the same files sealed, so the same chain head.
    let dir = temp();
    let head = |input: &str, to: &str| -> Result<String> {
        let to = dir.path().join(to);
        let to = to.to_str().context("path")?;
        server.query(&["archive", input, "--to", to])?;
        let verified = text(&server.query(&["verify", to])?);
        verified
            .lines()
            .find_map(|l| {
                l.strip_prefix("head")
                    .map(|h| h.split_whitespace().next().map(str::to_owned))
            })
            .flatten()
            .with_context(|| format!("no head in {verified}"))
    };
    ensure!(
        head(&url, "from-bucket")? == head(&local, "from-copy")?,
        "archives differ"
    );
    let pruned = server.query_output(&["archive", &url, "--to", "x", "--prune-source"])?;
    ensure!(
        pruned.status.code() == Some(1)
            && String::from_utf8_lossy(&pruned.stderr).contains("cannot do in object storage"),
        "{pruned:?}"
    );
    Ok(())
}

#[test]
fn what_cannot_work_with_a_store_is_refused_by_name() -> Result<()> {
    let server = S3Server::start()?;
    let missing = server.query_output(&["analyze", "s3://no-such-bucket/x"])?;
    let said = String::from_utf8_lossy(&missing.stderr);
    ensure!(
        missing.status.code() == Some(1)
            && said.contains("s3://no-such-bucket/x")
            && said.contains("NoSuchBucket"),
        "{missing:?}"
    );
    // Store-only options with a dataset folder: a usage error.
    let dir = temp();
    let folder = dir.path().join("ds");
    let refused = std::process::Command::new(recorder_bin())
        .args([
            "--dataset",
            folder.to_str().context("path")?,
            "--spool-max-bytes",
            "5",
        ])
        .output()?;
    ensure!(
        refused.status.code() == Some(2)
            && String::from_utf8_lossy(&refused.stderr)
                .contains("--spool-max-bytes applies to a dataset in object storage"),
        "{refused:?}"
    );
    // No credential variable: the recorder says where object_store will look instead (the
    // metadata service), before anything is uploaded.
    let spool = dir.path().join("spool");
    let mut bare = Launch::at(
        temp(),
        "s3://fleet/bare".into(),
        dir.path().join("s/r.sock"),
    )
    .args(&["--spool", spool.to_str().context("path")?])
    .start()?;
    let noted = bare
        .stderr_lines
        .iter()
        .any(|l| l.contains("no AWS credentials in the environment"));
    ensure!(noted, "{:?}", bare.stderr_lines);
    bare.kill()?;
    // doctor asks the store itself, and says what it answered.
    let doctor = |url: &str| {
        std::process::Command::new(recorder_bin())
            .args(["doctor", "--dataset", url])
            .envs(server.env())
            .output()
    };
    let absent = String::from_utf8_lossy(&doctor("s3://no-such-bucket/x")?.stdout).into_owned();
    ensure!(
        absent
            .lines()
            .any(|l| l.starts_with("fail") && l.contains("dataset") && l.contains("NoSuchBucket")),
        "{absent}"
    );
    // A spool serves one URL: another dataset's recorder on it refuses to start.
    server.create_bucket(BUCKET, false)?;
    let present =
        String::from_utf8_lossy(&doctor(&format!("s3://{BUCKET}/ds"))?.stdout).into_owned();
    ensure!(
        present
            .lines()
            .any(|l| l.starts_with("pass") && l.contains("the store answers")),
        "{present}"
    );
    let host = Host::new("bound-1", &[]);
    let mut first = host.start(&server, &[])?;
    first.stop()?;
    let other = std::process::Command::new(recorder_bin())
        .args(["--dataset", "s3://other/p", "--spool"])
        .arg(host.spool())
        .arg("--socket")
        .arg(host.socket())
        .envs(server.env())
        .output()?;
    ensure!(
        other.status.code() == Some(1)
            && String::from_utf8_lossy(&other.stderr).contains("holds files for s3://fleet/ds"),
        "{other:?}"
    );
    Ok(())
}
