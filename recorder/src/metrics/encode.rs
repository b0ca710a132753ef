//! The Prometheus text exposition format (version 0.0.4) of a [`Snapshot`] and the recorder's
//! [`Stats`], through the `prometheus-client` crate's encoder (names, label escaping, `_total`
//! and `_bucket`/`_sum`/`_count` suffixes, `le` formatting). Every name is in
//! `schemas/metrics.md`.

use std::sync::Arc;

use p11trace_record::functions::FUNCTIONS;
use p11trace_record::names::RV;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::tally::{BOUNDS_NS, OTHER_RV, Shared, Snapshot};
use crate::stats::Stats;

/// The HTTP body's `Content-Type`.
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Reads the batcher's latest snapshot and the shared counters at each scrape.
#[derive(Debug)]
struct Recorder {
    shared: Shared,
    stats: Arc<Stats>,
}

/// The registry the HTTP thread encodes at each scrape.
pub fn registry(shared: Shared, stats: Arc<Stats>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Recorder { shared, stats }));
    registry
}

/// The text of one scrape.
pub fn scrape(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, registry)?;
    Ok(text)
}

fn function_name(index: usize) -> &'static str {
    FUNCTIONS.get(index).map_or("unknown", |spec| spec.name)
}

/// A counter or gauge without labels.
fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    match kind {
        MetricType::Counter => metric.encode_counter::<NoLabelSet, _, u64>(&value, None),
        _ => metric.encode_gauge(&value),
    }
}

/// Counters and gauges read from [`Stats`]: (name without `_total`, help, type, value).
fn stats_metrics(stats: &Stats) -> [(&'static str, &'static str, MetricType, u64); 16] {
    use MetricType::{Counter, Gauge};
    let get = Stats::get;
    [
        (
            "p11trace_records_received",
            "Call records received from shims.",
            Counter,
            get(&stats.records_received),
        ),
        (
            "p11trace_rows_written",
            "Rows of the calls table written to Parquet files (with a replay of the log at start).",
            Counter,
            get(&stats.records_written),
        ),
        (
            "p11trace_files_written",
            "Parquet files written (calls and clients tables).",
            Counter,
            get(&stats.files_written),
        ),
        (
            "p11trace_dropped_by_recorder",
            "Call records received but refused by a full or failing write-ahead log.",
            Counter,
            get(&stats.dropped_by_recorder),
        ),
        (
            "p11trace_dropped_by_clients",
            "Calls the shims reported they could not deliver (sum over ended connections).",
            Counter,
            get(&stats.dropped_by_clients),
        ),
        (
            "p11trace_lost",
            "Calls clients sent that never arrived (sum over ended connections).",
            Counter,
            get(&stats.lost),
        ),
        (
            "p11trace_connections",
            "Client connections accepted.",
            Counter,
            get(&stats.clients_connected),
        ),
        (
            "p11trace_connections_rejected",
            "Connections the recorder refused (see the rejected count of --stats-every).",
            Counter,
            get(&stats.rejected),
        ),
        (
            "p11trace_protocol_errors",
            "Connections ended for a protocol error.",
            Counter,
            get(&stats.protocol_errors),
        ),
        (
            "p11trace_files_uploaded",
            "Files uploaded to the object store and verified.",
            Counter,
            get(&stats.files_uploaded),
        ),
        (
            "p11trace_uploaded_bytes",
            "Bytes of the files uploaded and verified.",
            Counter,
            get(&stats.bytes_uploaded),
        ),
        (
            "p11trace_upload_failures",
            "Upload attempts that failed (each is retried).",
            Counter,
            get(&stats.upload_failures),
        ),
        (
            "p11trace_clients_connected",
            "Clients connected now.",
            Gauge,
            get(&stats.clients_active),
        ),
        (
            "p11trace_wal_bytes",
            "Bytes of the write-ahead log.",
            Gauge,
            get(&stats.wal_bytes),
        ),
        (
            "p11trace_spool_bytes",
            "Bytes of finished Parquet files in the spool waiting for upload.",
            Gauge,
            get(&stats.spool_bytes),
        ),
        (
            "p11trace_upload_backlog_files",
            "Finished files in the spool not yet uploaded and verified.",
            Gauge,
            get(&stats.upload_backlog),
        ),
    ]
}

impl Collector for Recorder {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Copied under the lock, encoded outside it: the batcher never waits for a scrape.
        let snapshot: Snapshot = self
            .shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        calls(&mut encoder, &snapshot)?;
        durations(&mut encoder, &snapshot)?;
        clients(&mut encoder, &snapshot)?;
        for (name, help, kind, value) in stats_metrics(&self.stats) {
            single(&mut encoder, name, help, kind, value)?;
        }
        Ok(())
    }
}

fn calls(encoder: &mut DescriptorEncoder, snapshot: &Snapshot) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(
        "p11trace_calls",
        "PKCS#11 calls recorded, by function and return value.",
        None,
        MetricType::Counter,
    )?;
    for (index, func) in snapshot.funcs.iter().enumerate() {
        let function = function_name(index);
        let named = func.rvs.iter().map(|&(rv, n)| (RV.render(rv), n));
        let other = (func.other_rvs > 0).then(|| (OTHER_RV.into(), func.other_rvs));
        for (rv, n) in named.chain(other) {
            let labels = [("function", function), ("rv", rv.as_ref())];
            metric
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
    }
    Ok(())
}

fn durations(encoder: &mut DescriptorEncoder, snapshot: &Snapshot) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(
        "p11trace_call_duration_seconds",
        "Duration of the real module's PKCS#11 calls, by function.",
        None,
        MetricType::Histogram,
    )?;
    for (index, func) in snapshot.funcs.iter().enumerate() {
        if func.count == 0 {
            continue;
        }
        let bounds = BOUNDS_NS.iter().map(|&ns| ns as f64 / 1e9);
        let buckets: Vec<(f64, u64)> = bounds
            .chain([f64::INFINITY])
            .zip(func.buckets.iter().copied())
            .collect();
        let labels = [("function", function_name(index))];
        metric
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(func.sum_ns as f64 / 1e9, func.count, &buckets, None)?;
    }
    Ok(())
}

fn clients(encoder: &mut DescriptorEncoder, snapshot: &Snapshot) -> Result<(), std::fmt::Error> {
    type Pick = fn(&super::tally::ClientTally) -> u64;
    let families: [(&str, &str, Pick); 2] = [
        (
            "p11trace_client_dropped",
            "Calls a client's shim could not deliver (Σ dropped of its clients rows).",
            |c| c.dropped,
        ),
        (
            "p11trace_client_lost",
            "Calls a client sent that never arrived (Σ lost of its clients rows).",
            |c| c.lost,
        ),
    ];
    for (name, help, pick) in families {
        let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (client_id, client) in &snapshot.clients {
            let pid = client.pid.to_string();
            let labels = [
                ("client_id", client_id.as_str()),
                ("pid", pid.as_str()),
                ("process", client.process.as_str()),
            ];
            metric
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&pick(client), None)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tally::Tally;
    use p11trace_record::wire::CallRecord;

    #[test]
    fn a_scrape_names_calls_by_function_and_rv_with_cumulative_buckets() {
        let shared = Shared::default();
        let stats = Arc::new(Stats::default());
        let mut tally = Tally::new(shared.clone());
        let sign = p11trace_record::Func::from_name("C_Sign").unwrap().code();
        tally.calls(&[
            CallRecord {
                func: sign,
                dur_ns: 1_500,
                ..CallRecord::default()
            },
            CallRecord {
                func: sign,
                rv: 0xa0,
                dur_ns: 500,
                ..CallRecord::default()
            },
        ]);
        tally.client("id\"1", 7, "a\\b", 2, 0);
        tally.publish();
        let text = scrape(&registry(shared, stats)).unwrap();
        let expected = [
            r#"p11trace_calls_total{function="C_Sign",rv="CKR_OK"} 1"#,
            r#"p11trace_calls_total{function="C_Sign",rv="CKR_PIN_INCORRECT"} 1"#,
            r#"p11trace_call_duration_seconds_bucket{function="C_Sign",le="1e-06"} 1"#,
            r#"p11trace_call_duration_seconds_bucket{function="C_Sign",le="1.78e-06"} 2"#,
            r#"p11trace_call_duration_seconds_bucket{function="C_Sign",le="+Inf"} 2"#,
            r#"p11trace_call_duration_seconds_count{function="C_Sign"} 2"#,
            r#"p11trace_client_dropped_total{client_id="id\"1",pid="7",process="a\\b"} 2"#,
            "p11trace_clients_connected 0",
        ];
        for line in expected {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
    }
}
