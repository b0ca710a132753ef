//! Benchmark 3: bytes on disk per call. A realistic mix of pkcs11-tool jobs (`--test`, an ECDSA
//! signature of a hash, `--list-objects`, `--generate-random`, `--hash`) runs repeatedly with pkcs11-spy in
//! front of the shim, so one run produces both records of the very same calls: the spy's text log
//! and the recorder's dataset.
//!
//! The token holds an EC key only: with an RSA key, `pkcs11-tool --test` stops at the OAEP-with-label
//! decryption SoftHSM2 2.6 rejects (CKR_ARGUMENTS_BAD, direct as well as traced).

use std::process::Command;

use anyhow::{Context, Result};
use p11trace_tests::{Provider, SPY, login};
use serde::Serialize;

use crate::Ctx;
use crate::client::EC_LABEL;
use crate::measure::{self, parquet_bytes, parquet_rows};
use crate::report::{Line, bytes};
use crate::setup::{Rig, token_holding};

pub const BYTES_PER_CALL_TARGET: f64 = 16.0;
pub const SPY_RATIO_TARGET: f64 = 20.0;

#[derive(Debug, Clone, Serialize)]
pub struct Size {
    pub runs: u32,
    pub calls: u64,
    pub calls_bytes: u64,
    pub clients_bytes: u64,
    pub spy_bytes: u64,
}

pub fn run(ctx: &Ctx) -> Result<(Vec<Line>, serde_json::Value)> {
    let runs = if ctx.quick { 1 } else { 200 };
    let rig = Rig::start(
        ctx,
        token_holding(Provider::SoftHsm, &[("EC:prime256v1", EC_LABEL, "02")])?,
    )?;
    let (token, dir) = (&rig.token, rig.dir());
    let spy_log = dir.join("spy.log");
    let data = dir.join("data");
    std::fs::write(&data, [0x5a; 64])?;
    let data = data.to_string_lossy().into_owned();
    let hash = dir.join("hash");
    std::fs::write(&hash, [0xa5; 32])?;
    let hash = hash.to_string_lossy().into_owned();
    let signature = dir.join("signature").to_string_lossy().into_owned();
    let jobs: [&[&str]; 5] = [
        &["--test"],
        &[
            "--sign",
            "--id",
            "02",
            "--mechanism",
            "ECDSA",
            "-i",
            &hash,
            "-o",
            &signature,
        ],
        &["--list-objects"],
        &["--generate-random", "32", "-o", &signature],
        &[
            "--hash",
            "--mechanism",
            "SHA256",
            "-i",
            &data,
            "-o",
            &signature,
        ],
    ];
    for _ in 0..runs {
        for job in jobs {
            let args = login(job);
            let mut command: Command = token.pkcs11_tool(std::path::Path::new(SPY), &args);
            command
                .env("PKCS11SPY", &ctx.bins.shim)
                .env("PKCS11SPY_OUTPUT", &spy_log)
                .env("P11TRACE_MODULE", token.module())
                .env("P11TRACE_SOCKET", &rig.recorder.socket);
            measure::run(&mut command, None, dir)
                .with_context(|| format!("pkcs11-tool {}", job.join(" ")))?;
        }
    }
    let (_, recorder) = rig.stop()?;
    let dataset = &recorder.dataset;
    let size = Size {
        runs,
        calls: parquet_rows(&dataset.join("calls"))?,
        calls_bytes: parquet_bytes(&dataset.join("calls")),
        clients_bytes: parquet_bytes(&dataset.join("clients")),
        spy_bytes: std::fs::metadata(&spy_log)?.len(),
    };
    let calls = size.calls.max(1) as f64;
    let ours = (size.calls_bytes + size.clients_bytes) as f64 / calls;
    let spy = size.spy_bytes as f64 / calls;
    let lines = vec![Line::target(
        "3 bytes/call",
        format!(
            "pkcs11-tool job mix ×{runs} (SoftHSM2): {} calls",
            size.calls
        ),
        format!(
            "dataset {:.1} B/call ({} calls + {} clients) · spy {:.0} B/call ({}) · {:.0}× smaller",
            ours,
            bytes(size.calls_bytes as f64),
            bytes(size.clients_bytes as f64),
            spy,
            bytes(size.spy_bytes as f64),
            spy / ours
        ),
        format!("≤ {BYTES_PER_CALL_TARGET} B/call, ≥ {SPY_RATIO_TARGET}× smaller"),
        ours <= BYTES_PER_CALL_TARGET && spy / ours >= SPY_RATIO_TARGET,
    )];
    Ok((lines, serde_json::to_value(&size)?))
}
