//! The recorder's `--metrics` endpoint seen as Prometheus sees it: a free loopback port, a plain
//! HTTP GET, and the text parsed by the `prometheus_client` package's own parser (PyPI,
//! `tests/fixtures/python/metrics_parse.py`), then checked against the naming rules.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::fixtures;
use crate::process::{run, text};

/// A loopback port free a moment ago (bound to port 0, read, released).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `GET path` from `addr` (`127.0.0.1:PORT`): the status and the body.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut stream =
        TcpStream::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = text(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP header in {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    ensure!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "chunked response (not read here): {head}"
    );
    Ok((status, body.to_owned()))
}

/// One scrape of `/metrics`, parsed.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub text: String,
    /// `[{name, type, samples: [{name, labels, value}]}]`, as the parser returned them.
    pub families: Vec<Value>,
}

/// Scrapes `http://addr/metrics` (status 200 required) and parses it; a parse error fails.
pub fn scrape(addr: &str) -> Result<Scrape> {
    let (status, body) = http_get(addr, "/metrics")?;
    ensure!(status == 200, "GET /metrics: {status}: {body}");
    parse(&body)
}

/// Parses exposition `text` with `prometheus_client` (python3 must have it: `just deps`).
pub fn parse(exposition: &str) -> Result<Scrape> {
    let dir = crate::temp();
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, exposition)?;
    let script = fixtures().join("python/metrics_parse.py");
    let output = run(
        Command::new("python3").arg(&script).arg(&file),
        Duration::from_secs(60),
    )?;
    ensure!(
        output.status.success(),
        "the prometheus_client parser refused the scrape (is prometheus-client==0.26.0 \
         installed? `just deps`): {}\n{exposition}",
        text(&output.stderr)
    );
    let families: Vec<Value> = serde_json::from_slice(&output.stdout)?;
    Ok(Scrape {
        text: exposition.to_owned(),
        families,
    })
}

/// A metric name by Prometheus' rule: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn metric_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A label name by Prometheus' rule: `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__`.
pub fn label_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Scrape {
    /// Every sample: (name, labels, value).
    pub fn samples(&self) -> impl Iterator<Item = (&str, &serde_json::Map<String, Value>, f64)> {
        self.families
            .iter()
            .filter_map(|f| f["samples"].as_array())
            .flatten()
            .filter_map(|s| {
                Some((
                    s["name"].as_str()?,
                    s["labels"].as_object()?,
                    s["value"].as_f64().unwrap_or(f64::INFINITY),
                ))
            })
    }

    /// The samples named `name`: (labels, value).
    pub fn series(&self, name: &str) -> Vec<(&serde_json::Map<String, Value>, f64)> {
        self.samples()
            .filter(|(n, _, _)| *n == name)
            .map(|(_, labels, value)| (labels, value))
            .collect()
    }

    /// The one unlabelled sample `name`.
    pub fn value(&self, name: &str) -> Result<f64> {
        match self.series(name).as_slice() {
            [(_, value)] => Ok(*value),
            other => bail!("{} samples named {name}:\n{}", other.len(), self.text),
        }
    }

    /// Σ of the samples named `name`.
    pub fn sum(&self, name: &str) -> f64 {
        self.series(name).iter().map(|(_, v)| v).sum()
    }

    /// The samples `name` as a map from the values of `keys` (joined by `|`) to the value.
    pub fn by(&self, name: &str, keys: &[&str]) -> std::collections::BTreeMap<String, i64> {
        self.series(name)
            .into_iter()
            .map(|(labels, value)| {
                let key: Vec<&str> = keys
                    .iter()
                    .map(|k| labels.get(*k).and_then(Value::as_str).unwrap_or(""))
                    .collect();
                (key.join("|"), value as i64)
            })
            .collect()
    }

    /// Every family, sample and label name follows Prometheus' rules.
    pub fn check_names(&self) -> Result<()> {
        for family in &self.families {
            let name = family["name"].as_str().unwrap_or("");
            ensure!(metric_name_ok(name), "bad metric name {name:?}");
        }
        for (name, labels, _) in self.samples() {
            ensure!(metric_name_ok(name), "bad sample name {name:?}");
            for label in labels.keys() {
                ensure!(label_name_ok(label), "bad label name {label:?} on {name}");
            }
        }
        Ok(())
    }

    /// The metrics exposed are exactly those `schemas/metrics.md` lists (its table rows whose
    /// first cell is a `p11trace_…` name; counters with their `_total`).
    pub fn check_documented(&self) -> Result<()> {
        let documented: std::collections::BTreeSet<String> =
            crate::data::documented_paths("metrics.md")?
                .into_iter()
                .filter(|name| name.starts_with("p11trace_"))
                .collect();
        let exposed: std::collections::BTreeSet<String> = self
            .families
            .iter()
            .map(|family| {
                let name = family["name"].as_str().unwrap_or("");
                match family["type"].as_str() {
                    Some("counter") => format!("{name}_total"),
                    _ => name.to_owned(),
                }
            })
            .collect();
        ensure!(
            documented == exposed,
            "schemas/metrics.md lists {:?} but the scrape has {:?}",
            documented.difference(&exposed).collect::<Vec<_>>(),
            exposed.difference(&documented).collect::<Vec<_>>()
        );
        Ok(())
    }

    /// Every histogram's buckets, per series, are cumulative, end with `+Inf`, and that bucket
    /// equals the series' `_count`.
    pub fn check_histograms(&self) -> Result<()> {
        for family in self.families.iter().filter(|f| f["type"] == "histogram") {
            let name = family["name"].as_str().unwrap_or("");
            let counts = self.by(&format!("{name}_count"), &["function"]);
            let mut buckets: std::collections::BTreeMap<String, Vec<(String, f64)>> =
                Default::default();
            for (labels, value) in self.series(&format!("{name}_bucket")) {
                let series = labels.get("function").and_then(Value::as_str).unwrap_or("");
                let le = labels.get("le").and_then(Value::as_str).unwrap_or("");
                buckets
                    .entry(series.to_owned())
                    .or_default()
                    .push((le.to_owned(), value));
            }
            ensure!(
                buckets.len() == counts.len(),
                "{name}: buckets for {:?}, counts for {:?}",
                buckets.keys(),
                counts.keys()
            );
            for (series, list) in &buckets {
                let cumulative = list.windows(2).all(|w| w[0].1 <= w[1].1);
                ensure!(
                    cumulative,
                    "{name}{{{series}}}: buckets not cumulative: {list:?}"
                );
                let last = list.last().context("no bucket")?;
                ensure!(
                    last.0 == "+Inf",
                    "{name}{{{series}}}: last bucket is le={}",
                    last.0
                );
                ensure!(
                    Some(&(last.1 as i64)) == counts.get(series),
                    "{name}{{{series}}}: +Inf bucket {} != _count {:?}",
                    last.1,
                    counts.get(series)
                );
            }
        }
        Ok(())
    }
}

/// Scrapes every 100 ms until `done` says so (each scrape parsed); fails after `timeout`.
pub fn scrape_until(
    addr: &str,
    timeout: Duration,
    mut done: impl FnMut(&Scrape) -> bool,
) -> Result<Scrape> {
    let deadline = Instant::now() + timeout;
    loop {
        let scrape = scrape(addr)?;
        if done(&scrape) {
            return Ok(scrape);
        }
        if Instant::now() > deadline {
            bail!(
                "metrics never got there within {timeout:?}:\n{}",
                scrape.text
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
