//! Two stages on two threads: the caller parses, a writer thread turns calls into rows and
//! encodes Parquet. Calls cross in chunks over a bounded channel, so memory stays constant and
//! the parser waits (never buffers) when the writer falls behind.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use anyhow::{Context, Result, anyhow};
use p11trace_dataset::Source;

use crate::ImportedCall;
use crate::output::{FLUSH_ROWS, Output, append};

/// Calls per chunk, and chunks in flight: a few thousand rows' worth of memory, enough that
/// neither thread waits on the other's every call.
const CHUNK: usize = 4096;
const CHUNKS_IN_FLIGHT: usize = 4;

struct Chunk {
    source: Source,
    calls: Vec<ImportedCall>,
}

/// The writer thread and the chunk being filled for it.
pub(crate) struct Writer {
    sender: Option<SyncSender<Chunk>>,
    thread: Option<JoinHandle<Result<Output>>>,
    source: Source,
    chunk: Vec<ImportedCall>,
}

impl Writer {
    /// Starts the writer thread over `output`; rows carry `run_id`.
    pub(crate) fn spawn(output: Output, run_id: String) -> Result<Writer> {
        let (sender, receiver) = sync_channel(CHUNKS_IN_FLIGHT);
        let thread = std::thread::Builder::new()
            .name("import-writer".into())
            .spawn(move || write_rows(output, &run_id, receiver))
            .context("cannot start the import's writer thread")?;
        Ok(Writer {
            sender: Some(sender),
            thread: Some(thread),
            source: Source::PkcsSpy,
            chunk: Vec::with_capacity(CHUNK),
        })
    }

    /// The calls pushed from now on come from a `source` log.
    pub(crate) fn set_source(&mut self, source: Source) {
        if source != self.source {
            self.send();
            self.source = source;
        }
    }

    /// Queues one call; `false` once the writer has stopped (its error comes from
    /// [`finish`](Self::finish)), so the caller can stop reading.
    pub(crate) fn push(&mut self, call: ImportedCall) -> bool {
        self.chunk.push(call);
        if self.chunk.len() >= CHUNK {
            self.send();
        }
        self.sender.is_some()
    }

    fn send(&mut self) {
        if self.chunk.is_empty() {
            return;
        }
        let calls = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK));
        let chunk = Chunk {
            source: self.source,
            calls,
        };
        // A closed channel means the writer failed: stop sending, `finish` says why.
        if let Some(sender) = &self.sender
            && sender.send(chunk).is_err()
        {
            self.sender = None;
        }
    }

    /// Hands over the last calls and waits for the writer: the output with every row in it,
    /// not yet finished (the caller finishes it once the inputs passed their checks, or drops
    /// it, which leaves nothing behind).
    pub(crate) fn finish(mut self) -> Result<Output> {
        self.send();
        self.sender = None;
        let thread = self
            .thread
            .take()
            .ok_or_else(|| anyhow!("the import's writer thread was already joined"))?;
        thread
            .join()
            .map_err(|_| anyhow!("the import's writer thread panicked"))?
    }
}

impl Drop for Writer {
    /// An import that failed on the parser's side: the writer is stopped and its output dropped
    /// (which removes its temporary files) before the error reaches the caller.
    fn drop(&mut self) {
        self.sender = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_rows(mut output: Output, run_id: &str, chunks: Receiver<Chunk>) -> Result<Output> {
    // Returning early drops the receiver: the parser's next send fails and it stops.
    for chunk in chunks {
        for call in &chunk.calls {
            let (builder, sink) = output.builder(call.start_us)?;
            append(builder, run_id, chunk.source, call);
            if builder.len() >= FLUSH_ROWS {
                sink.write(&builder.finish())?;
            }
        }
    }
    Ok(output)
}
