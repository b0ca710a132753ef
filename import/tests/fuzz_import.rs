//! Property test over mutated real logs: whatever bytes arrive, import either succeeds or fails
//! with a message; it never panics, and a failed import leaves no output behind.
//!
//! Bounded (`PROPTEST_CASES`, default 96 per property) so it runs in `just test`; raise the
//! count for a longer local run: `PROPTEST_CASES=5000 cargo test -p p11trace-import --test fuzz_import`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use p11trace_import::{ImportOptions, LogFormat, import_file, sniff};
use proptest::prelude::*;
use proptest::test_runner::Config;

/// Where the real logs to mutate are, by format: a folder (every `.log` in it) or a file.
const SEED_PLACES: &[(LogFormat, &str)] = &[
    (LogFormat::Spy, "tests/fixtures/corpus"),
    (LogFormat::Spy, "tests/fixtures/spy-0.24-threads.log"),
    // A real threaded OpenSC 0.27 log: headers and their stamps apart, stamps glued mid-line.
    (LogFormat::Spy, "tests/fixtures/spy-0.27-threads.log"),
    // The integration guide's form: inline arguments, named outputs, multi-line templates.
    (LogFormat::Spy, "tests/fixtures/guide"),
    // p11-kit's `log-calls` output (the stderr of pkcs11-tool through p11-kit's proxy).
    (LogFormat::P11Kit, "tests/fixtures/p11kit"),
    // pkcs11-logger (Pkcs11Interop): pid/tid on every line, µs stamps.
    (LogFormat::Pkcs11Logger, "tests/fixtures/pkcs11-logger"),
    // libpkcs11shim (Mastercard): tagged records, bodies in the spy's rendering.
    (LogFormat::Pkcs11Shim, "tests/fixtures/libpkcs11shim"),
];

/// Real logs to mutate, each with its format: every place of [`SEED_PLACES`], and an observe
/// sample.
fn seeds() -> &'static [(LogFormat, Vec<u8>)] {
    static SEEDS: OnceLock<Vec<(LogFormat, Vec<u8>)>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut seeds = Vec::new();
        for &(format, place) in SEED_PLACES {
            let place = root.join(place);
            let mut files: Vec<PathBuf> = if place.is_dir() {
                std::fs::read_dir(&place)
                    .expect("a seed folder")
                    .filter_map(|entry| entry.ok().map(|e| e.path()))
                    .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
                    .collect()
            } else {
                vec![place.clone()]
            };
            assert!(
                !files.is_empty(),
                "no logs to mutate in {}",
                place.display()
            );
            files.sort();
            for file in files {
                seeds.push((format, std::fs::read(&file).expect("readable seed log")));
            }
        }
        seeds.push((LogFormat::Observe, OBSERVE.as_bytes().to_vec()));
        seeds
    })
}

const OBSERVE: &str = concat!(
    r#"{"ts":"2025-01-15T10:30:45.123Z","pid":4242,"tid":4243,"func":"C_OpenSession","rv":0,"rv_name":"CKR_OK","dur_ms":0.05,"slot_id":0,"session":1}"#,
    "\n",
    r#"{"ts":"2025-01-15T10:30:45.124Z","pid":4242,"tid":4243,"func":"C_Login","rv":160,"rv_name":"CKR_PIN_INCORRECT","dur_ms":1.5,"session":1}"#,
    "\n",
    r#"{"ts":"2025-01-15T10:30:45.130Z","pid":4242,"tid":4243,"func":"C_SignInit","rv":0,"dur_ms":0.02,"session":1,"mech":"CKM_SHA256_RSA_PKCS","template_summary":"CKA_CLASS=CKO_PRIVATE_KEY"}"#,
    "\n",
);

/// One edit of a log: the kinds of damage real files see.
#[derive(Debug, Clone)]
enum Mutation {
    /// Cut the file at a point (crash, full disk, partial copy).
    Truncate(usize),
    /// Overwrite one byte with any value.
    SetByte(usize, u8),
    /// Insert bytes: binary garbage, or a fragment of the spy's own vocabulary out of place.
    Insert(usize, Vec<u8>),
    /// Remove a range (lost lines).
    Delete(usize, usize),
    /// Repeat a line (a replayed buffer).
    DuplicateLine(usize),
    /// Move a line elsewhere (threads interleaving).
    MoveLine(usize, usize),
    /// Remove every newline in a range (gluing).
    Glue(usize, usize),
    /// Replace the digits in a range (huge handles, counts, dates, lengths).
    Renumber(usize, usize, u8),
}

fn fragment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 1..64),
        Just(b"Returned:  0 CKR_OK\n".to_vec()),
        Just(b"\n*** OpenSC PKCS#11 spy ***\n".to_vec()),
        Just(b"0: C_Initialize\nP:1; T:0x1 2024-01-01 00:00:00.000\n".to_vec()),
        Just(b"[in] pTemplate[2]: \n".to_vec()),
        Just(b"[cnt] 0000000000000007 - C_Sign\n[pid] 1\n[tid] 2\n".to_vec()),
        Just(b"[tic] 2024-01-01 00:00:00.000000\n[lap] 99999999999999999.000000\n".to_vec()),
        Just(b"[ret] 0 CKR_OK\n[toc] 2024-13-45 99:99:99.999999\n".to_vec()),
        Just(b"      00000000  5A 5A 5A  ZZZ[in ] pData[ulDataLen] ".to_vec()),
        Just(b"    CKA_VALUE      00000000deadbeef / 99999999999999999999\n".to_vec()),
        Just(b"2024-13-45 99:99:99.999\n".to_vec()),
        Just(b"7: C_Login(6, 1, <pin>, 4)\n".to_vec()),
        Just(b"8: C_GenerateKeyPair(6, {CKM_RSA_PKCS_KEY_PAIR_GEN, 0x0, 0},\n".to_vec()),
        Just(b"    {Attributes: CKA_TOKEN = TRUE; CKA_ID = 0x0\n".to_vec()),
        Just(b"Public Key: 99999999999999999999999\n".to_vec()),
        Just(b"\xff\xfe\x00\x7f".to_vec()),
        // pkcs11-logger's vocabulary out of place.
        Just(b"0x00000001 : 0x0000000000000002 : 2024-01-01 00:00:00.000000 - Entered C_Sign\n".to_vec()),
        Just(b"0x00000001 : 0x0000000000000002 : 2024-13-45 99:99:99.999999 - Returning 0 (CKR_OK)\n".to_vec()),
        Just(b"0x00000001 : 0x0000000000000002 :   *** Begin attribute template ***\n".to_vec()),
        Just(b"   ulValueLen: 99999999999999999999\n   *pValue: HEX(0G)\n".to_vec()),
        // p11-kit's vocabulary out of place.
        Just(b"C_Sign\n  IN: hSession = S99999999999999999999\n".to_vec()),
        Just(b" OUT: pTemplate = (2) [ { CKA_LABEL = (99) \"a\\x\" } ]\n".to_vec()),
        Just(b"  IN: pMechanism = {\n\tpParameter: (48) \"\\x00...\"\n".to_vec()),
        Just(b"C_Login = CKR_0xFFFFFFFFFFFFFFFFFF\n".to_vec()),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        (any::<usize>(), fragment()).prop_map(|(i, bytes)| Mutation::Insert(i, bytes)),
        (any::<usize>(), 0usize..400).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::MoveLine(a, b)),
        (any::<usize>(), 0usize..600).prop_map(|(i, n)| Mutation::Glue(i, n)),
        (any::<usize>(), 1usize..200, any::<u8>())
            .prop_map(|(i, n, d)| Mutation::Renumber(i, n, d)),
    ]
}

/// (start, end) of each line, newline included.
fn line_bounds(log: &[u8]) -> Vec<(usize, usize)> {
    let mut bounds = Vec::new();
    let mut start = 0;
    for (i, &b) in log.iter().enumerate() {
        if b == b'\n' {
            bounds.push((start, i + 1));
            start = i + 1;
        }
    }
    if start < log.len() {
        bounds.push((start, log.len()));
    }
    bounds
}

fn apply(log: &mut Vec<u8>, mutation: &Mutation) {
    let len = log.len();
    let at = |i: usize| i % (len + 1);
    match *mutation {
        Mutation::Truncate(i) => log.truncate(at(i)),
        Mutation::SetByte(i, b) => {
            if len > 0 {
                log[i % len] = b;
            }
        }
        Mutation::Insert(i, ref bytes) => {
            let at = at(i);
            log.splice(at..at, bytes.iter().copied());
        }
        Mutation::Delete(i, n) => {
            let at = at(i);
            log.drain(at..(at + n).min(len));
        }
        Mutation::DuplicateLine(i) | Mutation::MoveLine(i, _) => {
            let lines = line_bounds(log);
            if lines.is_empty() {
                return;
            }
            let (start, end) = lines[i % lines.len()];
            let line = log[start..end].to_vec();
            if let Mutation::MoveLine(_, to) = *mutation {
                log.drain(start..end);
                let to = to % (log.len() + 1);
                log.splice(to..to, line);
            } else {
                log.splice(end..end, line);
            }
        }
        Mutation::Glue(i, n) => {
            let at = at(i);
            let end = (at + n).min(len);
            let glued: Vec<u8> = log[at..end]
                .iter()
                .copied()
                .filter(|&b| b != b'\n')
                .collect();
            log.splice(at..end, glued);
        }
        Mutation::Renumber(i, n, digit) => {
            let at = at(i);
            for b in &mut log[at..(at + n).min(len)] {
                if b.is_ascii_digit() {
                    *b = b'0' + digit % 10;
                }
            }
        }
    }
}

fn io<T>(result: std::io::Result<T>) -> Result<T, TestCaseError> {
    result.map_err(|e| TestCaseError::fail(e.to_string()))
}

/// Imports `log` as `format` (or as detected) and checks the invariants of a clean outcome.
fn import_survives(
    log: &[u8],
    format: Option<LogFormat>,
    strict: bool,
) -> Result<(), TestCaseError> {
    let dir = io(tempfile::tempdir())?;
    let input = dir.path().join("input.log");
    io(std::fs::write(&input, log))?;
    let format = match format {
        Some(format) => format,
        // Detection may refuse unrecognisable bytes: that is a clean error, not a panic.
        None => match sniff(log) {
            None => return Ok(()),
            Some(format) => format,
        },
    };
    let out = dir.path().join("out.parquet");
    let options = ImportOptions {
        tz: Some("Europe/Berlin".to_owned()),
        strict,
        progress: false,
        run_id: None,
    };
    match import_file(&input, format, &out, &options) {
        Ok(summary) => {
            prop_assert!(summary.calls > 0, "a successful import found calls");
            prop_assert!(out.is_file(), "a successful import leaves its file");
        }
        Err(error) => {
            prop_assert!(!error.to_string().is_empty());
            prop_assert!(
                !out.exists(),
                "a failed import left {} behind",
                out.display()
            );
        }
    }
    let leftovers: Vec<String> = io(std::fs::read_dir(dir.path()))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name != "input.log" && name != "out.parquet")
        .collect();
    prop_assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    Ok(())
}

fn config() -> Config {
    Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(96),
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_logs_import_or_fail_cleanly(
        seed in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..12),
        strict in any::<bool>(),
        forced in any::<bool>(),
    ) {
        let seeds = seeds();
        let (own, seed) = &seeds[seed.index(seeds.len())];
        let mut log = seed.clone();
        for mutation in &mutations {
            apply(&mut log, mutation);
        }
        // Forced: parse as the seed's own format even where detection would refuse the damage.
        import_survives(&log, forced.then_some(*own), strict)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic_any_parser(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        format in any::<prop::sample::Index>(),
    ) {
        let format = LogFormat::ALL[format.index(LogFormat::ALL.len())];
        import_survives(&bytes, Some(format), false)?;
    }
}

/// The harness itself: untouched seeds import, so the properties above really exercise the parsers.
#[test]
fn unmutated_seeds_import() {
    let seeds = seeds();
    for (index, (own, log)) in seeds.iter().enumerate() {
        let dir = tempfile::tempdir().expect("temp dir");
        let input = dir.path().join("input.log");
        std::fs::write(&input, log).expect("write seed");
        let out = dir.path().join("out.parquet");
        let options = ImportOptions {
            tz: Some("UTC".to_owned()),
            ..ImportOptions::default()
        };
        let format = sniff(log).expect("seed format detected");
        assert_eq!(format, *own, "seed {index}");
        let summary = import_file(&input, format, &out, &options).expect("seed imports");
        assert!(summary.calls > 0 && out.is_file(), "seed {index}");
    }
}
