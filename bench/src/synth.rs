//! Synthetic inputs for the query benchmark: a recorder-shaped dataset of N calls with a realistic
//! shape (processes with threads and sessions, login/find/sign/digest jobs, size queries, wrong
//! PINs, unclosed sessions, missing `C_Finalize`, slow outliers), and a large pkcs11-spy log made
//! of real logs appended to each other, as several processes appending to one file make it.

use std::path::Path;

use anyhow::{Context, Result};
use p11trace_dataset::layout::{CALLS, Layout, part_name};
use p11trace_dataset::{CallRow, Source};
use p11trace_dataset::{CallsBuilder, ParquetSink, calls_schema, writer_properties};

/// Deterministic xorshift64*: the same dataset every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

const CKR_PIN_INCORRECT: u64 = 0xA0;
const CKR_BUFFER_TOO_SMALL: u64 = 0x150;
const CKR_OBJECT_HANDLE_INVALID: u64 = 0x82;
const CKM_SHA256: u64 = 0x250;
const CKM_SHA256_RSA_PKCS: u64 = 0x40;
const CKM_ECDSA: u64 = 0x1041;
const CKU_USER: u64 = 1;

/// Writes calls into Parquet files of one dataset table, rolling like the recorder does.
struct TableWriter<'a> {
    dataset: &'a Path,
    builder: CallsBuilder,
    sink: Option<ParquetSink>,
    files: u64,
    rows_per_file: u64,
}

impl TableWriter<'_> {
    fn push(&mut self, row: &CallRow<'_>) -> Result<()> {
        self.builder.append(row);
        if self.builder.len() >= 65_536 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.builder.is_empty() {
            return Ok(());
        }
        if self.sink.is_none() {
            self.files += 1;
            let layout = Layout::new(self.dataset);
            let path = layout.part(CALLS, "2026-11-25", &part_name("synth", self.files));
            self.sink = Some(ParquetSink::create(
                &layout.temp(),
                &path,
                calls_schema(),
                writer_properties(CALLS, &[]),
            )?);
        }
        let batch = self.builder.finish();
        if let Some(sink) = self.sink.as_mut() {
            sink.write(&batch)?;
            if sink.rows() >= self.rows_per_file {
                self.close()?;
            }
        }
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        if let Some(sink) = self.sink.take() {
            sink.finish().context("closing a synthetic Parquet file")?;
        }
        Ok(())
    }
}

/// One traced process being generated.
struct Process {
    client_id: String,
    process: String,
    module: &'static str,
    provider: &'static str,
    pid: i64,
    seq: i64,
    clock_us: i64,
    /// The last operation started (`op_id`, as the shim numbers them per client).
    op: u64,
}

/// The operation family of a function the shim gives an `op_id` (`C_SignInit`, `C_Sign`, …).
fn in_operation(func: &str) -> bool {
    [
        "C_Sign",
        "C_Verify",
        "C_Digest",
        "C_Encrypt",
        "C_Decrypt",
        "C_FindObjects",
    ]
    .iter()
    .any(|family| func.starts_with(family))
}

/// A call about to be written.
#[derive(Default, Clone, Copy)]
struct Call {
    func: &'static str,
    rv: u64,
    typical_ns: f64,
    session: Option<u64>,
    slot: Option<u64>,
    mechanism: Option<u64>,
    object: Option<u64>,
    user_type: Option<u64>,
    in_len: Option<i64>,
    out_len: Option<i64>,
}

fn call(func: &'static str, typical_ns: f64) -> Call {
    Call {
        func,
        typical_ns,
        ..Call::default()
    }
}

impl Call {
    fn on(self, session: u64) -> Call {
        Call {
            session: Some(session),
            ..self
        }
    }
    fn slot(self, slot: u64) -> Call {
        Call {
            slot: Some(slot),
            ..self
        }
    }
    fn object(self, object: u64) -> Call {
        Call {
            object: Some(object),
            ..self
        }
    }
    fn mechanism(self, mechanism: u64) -> Call {
        Call {
            mechanism: Some(mechanism),
            ..self
        }
    }
    fn user(self) -> Call {
        Call {
            user_type: Some(CKU_USER),
            ..self
        }
    }
    fn lens(self, input: Option<i64>, output: Option<i64>) -> Call {
        Call {
            in_len: input,
            out_len: output,
            ..self
        }
    }
    fn fails(self, rv: u64) -> Call {
        Call { rv, ..self }
    }
}

struct Generator<'a> {
    rng: Rng,
    out: TableWriter<'a>,
    rows: u64,
    target: u64,
    run_id: String,
}

impl Generator<'_> {
    fn emit(&mut self, process: &mut Process, tid: i64, call: Call) -> Result<()> {
        let spread = 0.6 + 0.8 * self.rng.unit();
        let outlier = if self.rng.chance(0.0005) { 40.0 } else { 1.0 };
        let dur_ns = (call.typical_ns * spread * outlier) as i64;
        let found = [call.object.unwrap_or(0)];
        if call.func.ends_with("Init") {
            process.op += 1;
        }
        let op_id = in_operation(call.func).then_some(process.op);
        let row = CallRow {
            run_id: &self.run_id,
            client_id: &process.client_id,
            source: Some(Source::Shim),
            host: Some("bench-host"),
            pid: Some(process.pid),
            tid: Some(tid),
            process: Some(&process.process),
            module: process.module,
            provider: Some(process.provider),
            interface_version: Some("3.0"),
            seq: process.seq,
            start_us: Some(process.clock_us),
            start_local: false,
            dur_ns: Some(dur_ns),
            func: call.func,
            internal: false,
            returned: true,
            rv: Some(call.rv),
            slot_id: call.slot,
            session: call.session,
            mechanism: call.mechanism,
            object: call.object.filter(|_| call.func != "C_FindObjects"),
            out_objects: (call.func == "C_FindObjects").then_some(&found[..]),
            user_type: call.user_type,
            in_len: call.in_len,
            out_len: call.out_len,
            op_id,
            ..CallRow::default()
        };
        self.out.push(&row)?;
        process.seq += 1;
        process.clock_us += dur_ns / 1000 + 1 + self.rng.below(50) as i64;
        self.rows += 1;
        Ok(())
    }

    /// One session's life: open, log in, a run of jobs, log out, close.
    fn session(&mut self, process: &mut Process, tid: i64, handle: u64) -> Result<()> {
        let on = |func, typical_ns| call(func, typical_ns).on(handle);
        let mut calls = vec![on("C_OpenSession", 12_000.0).slot(0)];
        if self.rng.chance(0.01) {
            let wrong = on("C_Login", 60_000.0)
                .user()
                .lens(Some(8), None)
                .fails(CKR_PIN_INCORRECT);
            calls.extend(std::iter::repeat_n(wrong, 1 + self.rng.below(5) as usize));
        }
        calls.push(on("C_Login", 60_000.0).user().lens(Some(12), None));
        for _ in 0..1 + self.rng.below(40) {
            let key = 2 + self.rng.below(6);
            match self.rng.below(10) {
                0..=3 => {
                    let (mechanism, sign_ns, signature) = if self.rng.chance(0.6) {
                        (CKM_SHA256_RSA_PKCS, 1_400_000.0, Some(256))
                    } else {
                        (CKM_ECDSA, 90_000.0, Some(64))
                    };
                    calls.extend([
                        on("C_FindObjectsInit", 2_500.0),
                        on("C_FindObjects", 3_500.0).object(key),
                        on("C_FindObjectsFinal", 400.0),
                    ]);
                    let sign_init = on("C_SignInit", 6_000.0).mechanism(mechanism).object(key);
                    if self.rng.chance(0.002) {
                        calls.push(sign_init.fails(CKR_OBJECT_HANDLE_INVALID));
                        continue;
                    }
                    calls.push(sign_init);
                    let sign = on("C_Sign", sign_ns).lens(Some(64), signature);
                    if self.rng.chance(0.3) {
                        // The two-call idiom: a size query, then the real call.
                        calls.push(Call {
                            typical_ns: 1_000.0,
                            ..sign
                        });
                    }
                    if self.rng.chance(0.003) {
                        calls.push(Call {
                            typical_ns: 1_000.0,
                            ..sign.fails(CKR_BUFFER_TOO_SMALL)
                        });
                    }
                    calls.push(sign);
                }
                4..=5 => calls.push(on("C_GetSessionInfo", 350.0)),
                6 => calls.push(on("C_GenerateRandom", 1_500.0).lens(None, Some(32))),
                7..=8 => calls.extend([
                    on("C_DigestInit", 900.0).mechanism(CKM_SHA256),
                    on("C_Digest", 2_200.0).lens(Some(64), Some(32)),
                ]),
                _ => calls.push(on("C_GetAttributeValue", 4_000.0).object(key)),
            }
        }
        calls.push(on("C_Logout", 8_000.0));
        if !self.rng.chance(0.02) {
            calls.push(on("C_CloseSession", 9_000.0));
        }
        for call in calls {
            self.emit(process, tid, call)?;
        }
        Ok(())
    }

    fn process(&mut self, index: u64, calls: u64) -> Result<()> {
        let kryoptic = index % 2 == 1;
        let mut process = Process {
            client_id: format!("synth-{index:04}"),
            process: format!("app-{}", index % 7),
            module: if kryoptic {
                "/usr/lib/kryoptic/libkryoptic_pkcs11.so"
            } else {
                "/usr/lib/softhsm/libsofthsm2.so"
            },
            provider: if kryoptic { "Kryoptic" } else { "SoftHSM2" },
            pid: 10_000 + index as i64,
            seq: 0,
            clock_us: 1_795_564_800_000_000 + (index as i64) * 60_000_000,
            op: 0,
        };
        let main = process.pid;
        self.emit(&mut process, main, call("C_Initialize", 900_000.0))?;
        self.emit(&mut process, main, call("C_GetInfo", 400.0))?;
        self.emit(
            &mut process,
            main,
            Call {
                out_len: Some(1),
                ..call("C_GetSlotList", 600.0)
            },
        )?;
        self.emit(
            &mut process,
            main,
            Call {
                slot: Some(0),
                ..call("C_GetTokenInfo", 1_200.0)
            },
        )?;
        let until = self.rows + calls;
        let mut handle = 1;
        while self.rows < until.min(self.target) {
            let tid = process.pid + 1 + self.rng.below(4) as i64;
            self.session(&mut process, tid, handle)?;
            handle += 1;
        }
        if !self.rng.chance(0.05) {
            self.emit(&mut process, main, call("C_Finalize", 20_000.0))?;
        }
        Ok(())
    }
}

/// Writes a dataset of about `rows` calls (whole sessions; a few more, never fewer).
pub fn dataset(folder: &Path, rows: u64) -> Result<u64> {
    let processes = (rows / 150_000).clamp(4, 64);
    let mut generator = Generator {
        rng: Rng(0x9E37_79B9_7F4A_7C15),
        out: TableWriter {
            dataset: folder,
            builder: CallsBuilder::new(),
            sink: None,
            files: 0,
            rows_per_file: 1_000_000,
        },
        rows: 0,
        target: rows,
        run_id: "synth-run".to_owned(),
    };
    for index in 0..processes {
        generator.process(index, rows.div_ceil(processes))?;
    }
    generator.out.flush()?;
    generator.out.close()?;
    let _ = std::fs::remove_dir(folder.join(".tmp"));
    Ok(generator.rows)
}

/// Appends real spy logs (the test corpus, `tests/fixtures/corpus/`) to one file until it holds at
/// least `bytes`.
pub fn spy_log(path: &Path, bytes: u64) -> Result<u64> {
    repeated_log(path, &p11trace_tests::corpus_logs(), bytes)
}

/// Appends the logs `sources` to one file, round after round, until it holds at least `bytes`.
pub fn repeated_log(path: &Path, sources: &[std::path::PathBuf], bytes: u64) -> Result<u64> {
    let logs = sources
        .iter()
        .map(std::fs::read)
        .collect::<std::io::Result<Vec<_>>>()?;
    anyhow::ensure!(
        logs.iter().any(|log| !log.is_empty()),
        "no log to repeat in {sources:?}"
    );
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut written = 0u64;
    while written < bytes {
        for log in &logs {
            std::io::Write::write_all(&mut out, log)?;
            written += log.len() as u64;
        }
    }
    std::io::Write::flush(&mut out)?;
    Ok(written)
}
