//! Importing into a dataset folder: one part file per date partition, each complete.

use std::path::Path;

use p11trace_import::{ImportOptions, LogFormat, import_file};

fn parquet_files(dir: &Path) -> Vec<std::path::PathBuf> {
    p11trace_dataset::layout::parquet_files(dir).expect("walk the dataset")
}

#[test]
fn a_log_spanning_two_days_imports_into_two_partitions() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/corpus");
    let log = std::fs::read_to_string(corpus.join("pt-list-slots.log")).expect("corpus log");
    // The same calls, the later ones stamped a day later (a log that runs past midnight).
    let at = log.find("2: ").expect("a third record");
    let spanning = format!(
        "{}{}",
        &log[..at],
        log[at..].replace("2026-11-25 ", "2026-11-26 ")
    );
    let dir = tempfile::tempdir().expect("temp");
    let input = dir.path().join("spanning.log");
    std::fs::write(&input, spanning).expect("write log");
    let out = dir.path().join("dataset");
    let options = ImportOptions {
        tz: Some("UTC".into()),
        ..ImportOptions::default()
    };
    let summary = import_file(&input, LogFormat::Spy, &out, &options).expect("import");
    assert_eq!(summary.calls, 7);
    let files = parquet_files(&out);
    let partitions: Vec<String> = files
        .iter()
        .map(|f| {
            f.parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        partitions,
        ["date=2026-11-25", "date=2026-11-26"],
        "{files:?}"
    );
    assert!(!out.join(".tmp").exists(), "no temporary files left");
}
