//! `--metrics ADDR`: live Prometheus metrics on `GET /metrics` (names in `schemas/metrics.md`).
//!
//! The batcher counts calls into plain arrays it owns ([`tally::Tally`]: an array index and an
//! add per row, no lock, no hashing) and publishes a copy once per flush (at most every 0.5 s);
//! the `metrics` thread serves that copy and the recorder's atomic [`Stats`] with `tiny_http`,
//! one request at a time. Without `--metrics` the batcher holds no tally and counts nothing.

pub mod encode;
pub mod tally;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use prometheus_client::registry::Registry;

use crate::stats::Stats;
pub use tally::{Shared, Tally};

/// Parses `--metrics`: `PORT` (on 127.0.0.1), `IP:PORT`, `[IPv6]:PORT` or `localhost:PORT`.
pub fn parse_addr(value: &str) -> Result<SocketAddr, String> {
    let loopback = |port| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    if let Ok(port) = value.parse::<u16>() {
        return Ok(loopback(port));
    }
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Some(port) = value.strip_prefix("localhost:")
        && let Ok(port) = port.parse::<u16>()
    {
        return Ok(loopback(port));
    }
    Err(format!(
        "`{value}` is not PORT, IP:PORT or localhost:PORT (e.g. 9464, 127.0.0.1:9464, [::1]:9464)"
    ))
}

/// The metrics endpoint, serving until dropped.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` (an error names it) and serves `shared` and `stats` from a thread of its own.
    pub fn start(addr: SocketAddr, shared: Shared, stats: Arc<Stats>) -> Result<Server> {
        let http = tiny_http::Server::http(addr)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("cannot serve metrics on {addr} (--metrics)"))?;
        let addr = http.server_addr().to_ip().unwrap_or(addr);
        let registry = encode::registry(shared, stats);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("metrics".into())
                .spawn(move || serve(&http, &registry, &stop))
                .context("cannot start the metrics thread")?
        };
        Ok(Server {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers requests until `stop`: `GET /metrics` (or `HEAD`) the scrape, anything else 404
/// (another method on `/metrics`, 405).
fn serve(http: &tiny_http::Server, registry: &Registry, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        let request = match http.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(request)) => request,
            Ok(None) => continue,
            Err(error) => {
                eprintln!("p11trace-recorder: the metrics endpoint stopped: {error}");
                return;
            }
        };
        let path = request.url().split('?').next().unwrap_or_default();
        let method = request.method().clone();
        let response = match (path, &method) {
            ("/metrics", tiny_http::Method::Get | tiny_http::Method::Head) => {
                match encode::scrape(registry) {
                    Ok(text) => text_response(200, text, encode::CONTENT_TYPE),
                    Err(_) => text_response(500, "cannot encode the metrics\n".into(), PLAIN),
                }
            }
            ("/metrics", _) => text_response(405, "only GET /metrics\n".into(), PLAIN),
            _ => text_response(
                404,
                "not found: the metrics are at /metrics\n".into(),
                PLAIN,
            ),
        };
        // A scraper that went away is its own problem.
        let _ = request.respond(response);
    }
}

const PLAIN: &str = "text/plain; charset=utf-8";

fn text_response(
    status: u16,
    body: String,
    content_type: &str,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    // Always a Content-Length (tiny_http would chunk bodies past 32 KiB): every scraper reads it.
    let response = tiny_http::Response::from_string(body)
        .with_status_code(status)
        .with_chunked_threshold(usize::MAX);
    match tiny_http::Header::from_bytes("Content-Type", content_type) {
        Ok(header) => response.with_header(header),
        Err(()) => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_default_to_loopback_and_nonsense_is_refused() {
        assert_eq!(parse_addr("9464").unwrap().to_string(), "127.0.0.1:9464");
        assert_eq!(parse_addr("0.0.0.0:9").unwrap().to_string(), "0.0.0.0:9");
        assert_eq!(parse_addr("[::1]:9464").unwrap().to_string(), "[::1]:9464");
        assert_eq!(
            parse_addr("localhost:80").unwrap().to_string(),
            "127.0.0.1:80"
        );
        let error = parse_addr("nonsense:xx").unwrap_err();
        assert!(error.contains("`nonsense:xx`"), "{error}");
        assert!(parse_addr("70000").is_err());
    }
}
