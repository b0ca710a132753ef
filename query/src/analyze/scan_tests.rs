//! The size-query rule's two paths on files the recorder's own writer makes: a successor proven
//! as the file is read (the client's next call, on the same thread), and one only the second
//! read finds (the client's next call is another thread's).

use std::path::{Path, PathBuf};

use p11trace_dataset::{CallRow, CallsBuilder, ParquetSink, calls_schema, writer_properties};

use super::read;
use crate::filters::Criteria;

/// (seq, tid, func, rv) of client `c`, all on session 1.
const CALLS: [(i64, i64, &str, u64); 5] = [
    (0, 1, "C_Sign", 0x150),
    (1, 1, "C_Sign", 0),
    (2, 1, "C_Decrypt", 0x150),
    (3, 2, "C_Decrypt", 0),
    (4, 1, "C_Decrypt", 0),
];

fn write(dir: &Path, calls: &[(i64, i64, &str, u64)], name: &str) -> PathBuf {
    let mut builder = CallsBuilder::new();
    for &(seq, tid, func, rv) in calls {
        builder.append(&CallRow {
            run_id: "run",
            client_id: "c",
            module: "m.so",
            pid: Some(7),
            tid: Some(tid),
            seq,
            start_us: Some(1_000 + seq),
            dur_ns: Some(100 + seq),
            func,
            returned: true,
            rv: Some(rv),
            session: Some(1),
            ..CallRow::default()
        });
    }
    let path = dir.join(name);
    let properties = writer_properties(p11trace_dataset::layout::CALLS, &[]);
    let mut sink =
        ParquetSink::create(&dir.join(".tmp"), &path, calls_schema(), properties).expect("a sink");
    sink.write(&builder.finish()).expect("written");
    sink.finish().expect("finished")
}

/// Size queries retried per function, and how many the first read proved.
fn retried(files: &[PathBuf]) -> (Vec<(String, u64)>, usize) {
    let calls = read(files, &Criteria::default(), None).expect("read");
    let mut retried: Vec<(String, u64)> = calls
        .tally
        .cells
        .iter()
        .filter(|(key, _)| key.rv == 0x150)
        .map(|(key, cell)| (calls.func(key.func).unwrap_or("").to_owned(), cell.retried))
        .collect();
    retried.sort();
    let proven = calls
        .tally
        .size_queries
        .iter()
        .filter(|query| query.next.is_some())
        .count();
    (retried, proven)
}

#[test]
fn a_successor_on_the_same_thread_is_proven_as_read_and_another_threads_call_is_skipped() {
    let dir = tempfile::tempdir().expect("a folder");
    let file = write(dir.path(), &CALLS, "all.parquet");
    let (retried, proven) = retried(&[file]);
    let both = vec![("C_Decrypt".to_owned(), 1), ("C_Sign".to_owned(), 1)];
    assert_eq!(
        retried, both,
        "both size queries were retried on their own thread"
    );
    assert_eq!(
        proven, 1,
        "only C_Sign's successor is its client's next call"
    );
}

#[test]
fn successors_in_other_files_are_found_by_the_second_read() {
    let dir = tempfile::tempdir().expect("a folder");
    let files: Vec<PathBuf> = CALLS
        .iter()
        .rev()
        .enumerate()
        .map(|(index, call)| write(dir.path(), &[*call], &format!("{index}.parquet")))
        .collect();
    let (retried, proven) = retried(&files);
    let both = vec![("C_Decrypt".to_owned(), 1), ("C_Sign".to_owned(), 1)];
    assert_eq!(retried, both);
    assert_eq!(proven, 0, "no successor is in its size query's file");
}
