//! Cutting queued records into batch messages that each fit one ipc-channel fragment.
//!
//! ipc-channel sends a message longer than one fragment (the socket's send buffer less what the
//! kernel reserves for descriptors: about 207 KiB on Linux) as a first fragment on our
//! non-blocking data socket and the rest on a fresh socket that is *blocking*, so a stalled
//! recorder could hold the sender there. Batches are therefore cut by their exact encoded size
//! ([`wire::codec`]'s `serialized_size`, after the labels are hashed), never past
//! [`fragment_limit`]: an honest shim never fragments. A record too large for a fragment on its
//! own (only templates of hundreds of long labels come close) sheds attribute values, the last
//! first, keeping every attribute's type and length, until it fits.

use bincode::Options as _;
use ipc_channel::platform::OsIpcSender;
use p11trace_record::attr::AttrValue;
use p11trace_record::wire::{self, Batch, CallRecord, Message};

/// Longest framed message ipc-channel sends as one fragment on this platform.
pub fn fragment_limit() -> usize {
    OsIpcSender::get_max_fragment_size()
}

/// Bytes of a batch message besides its records: the empty message and the longest length prefix
/// [`wire::frame`] writes (a LEB128 `u64`).
fn batch_overhead() -> usize {
    let empty = Message::Batch(Batch {
        records: Vec::new(),
        seq_high: 0,
        dropped: 0,
        sent: 0,
    });
    measured(wire::codec().serialized_size(&empty)).saturating_add(10)
}

fn measured(size: Result<u64, bincode::Error>) -> usize {
    size.ok()
        .and_then(|size| usize::try_from(size).ok())
        .unwrap_or(usize::MAX)
}

/// Encoded size of one record inside a batch.
pub fn record_size(record: &CallRecord) -> usize {
    measured(wire::codec().serialized_size(record))
}

fn value_size(value: &AttrValue) -> usize {
    measured(wire::codec().serialized_size(value))
}

/// Replaces attribute values (text and bytes, the last first) by [`AttrValue::None`] until the
/// record's encoded size is at most `limit`; returns the size reached.
fn shed_values(record: &mut CallRecord, limit: usize) -> usize {
    let mut size = record_size(record);
    let none = value_size(&AttrValue::None);
    if let Some(attrs) = record.attrs.as_mut() {
        for attr in attrs.iter_mut().rev() {
            if size <= limit {
                break;
            }
            if matches!(attr.value, AttrValue::Text(_) | AttrValue::Bytes(_)) {
                let freed = value_size(&attr.value).saturating_sub(none);
                attr.value = AttrValue::None;
                size = size.saturating_sub(freed);
            }
        }
    }
    size
}

/// Cuts batches; a record that would have overflowed one batch is carried to the next.
#[derive(Default)]
pub struct Cutter {
    carry: Option<CallRecord>,
}

impl Cutter {
    /// Whether a record is waiting for the next batch.
    pub fn carrying(&self) -> bool {
        self.carry.is_some()
    }

    /// Fills `batch` (emptied first) with the carried record, then records from `next`, each
    /// passed through `prepare` before it is measured: up to [`wire::TARGET_BATCH_BYTES`], and
    /// never past one fragment. Returns how many records could not fit even alone (dropped).
    pub fn fill(
        &mut self,
        batch: &mut Vec<CallRecord>,
        mut next: impl FnMut() -> Option<CallRecord>,
        prepare: impl Fn(&mut CallRecord),
    ) -> u64 {
        batch.clear();
        let limit = fragment_limit().saturating_sub(batch_overhead());
        let target = wire::TARGET_BATCH_BYTES.min(limit);
        let (mut bytes, mut unfit) = (0usize, 0u64);
        while bytes < target {
            let mut record = match self.carry.take() {
                Some(record) => record,
                None => {
                    let Some(mut record) = next() else { break };
                    prepare(&mut record);
                    record
                }
            };
            let mut size = record_size(&record);
            if size > limit {
                size = shed_values(&mut record, limit);
                if size > limit {
                    unfit += 1;
                    continue;
                }
            }
            if bytes.saturating_add(size) > limit {
                self.carry = Some(record);
                break;
            }
            bytes += size;
            batch.push(record);
        }
        unfit
    }

    /// Takes the carried record (to count it as dropped).
    pub fn take_carry(&mut self) -> Option<CallRecord> {
        self.carry.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p11trace_record::attr::{Attr, AttrType, Template};

    fn labelled(count: usize, text: &str) -> CallRecord {
        let attr = Attr {
            template: Template::In,
            kind: AttrType::Attribute(3),
            len: 256,
            value: AttrValue::Text(text.to_owned()),
        };
        CallRecord {
            attrs: Some(vec![attr; count]),
            ..CallRecord::default()
        }
    }

    fn framed_len(batch: &[CallRecord]) -> usize {
        let message = Message::Batch(Batch {
            records: batch.to_vec(),
            seq_high: u64::MAX,
            dropped: u64::MAX,
            sent: u64::MAX,
        });
        let mut out = Vec::new();
        wire::frame(&message, &mut out).unwrap();
        out.len()
    }

    #[test]
    fn every_batch_fits_one_fragment_and_no_record_is_lost() {
        let label = "L".repeat(256);
        let mut queue: Vec<CallRecord> = (0..20).map(|_| labelled(256, &label)).collect();
        queue.push(labelled(512, &"\u{fffd}".repeat(256)));
        let total = queue.len();
        let mut queue = queue.into_iter();
        let (mut cutter, mut batch, mut seen) = (Cutter::default(), Vec::new(), 0);
        loop {
            assert_eq!(cutter.fill(&mut batch, || queue.next(), |_| {}), 0);
            if batch.is_empty() {
                break;
            }
            assert!(framed_len(&batch) <= fragment_limit());
            seen += batch.len();
        }
        assert_eq!(seen, total);
    }

    #[test]
    fn an_oversized_record_keeps_its_types_and_lengths() {
        let mut record = labelled(512, &"\u{fffd}".repeat(256));
        let limit = fragment_limit() - batch_overhead();
        assert!(record_size(&record) > limit);
        assert!(shed_values(&mut record, limit) <= limit);
        assert_eq!(
            record_size(&record),
            shed_values(&mut record.clone(), limit)
        );
        let attrs = record.attrs.unwrap();
        assert_eq!(attrs.len(), 512);
        assert!(attrs.iter().all(|a| a.len == 256));
        assert!(matches!(attrs[0].value, AttrValue::Text(_)));
        assert!(matches!(attrs[511].value, AttrValue::None));
    }
}
