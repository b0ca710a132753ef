//! The record as it waits in the queue ([`Rec`]), and its conversion to the wire's `CallRecord`,
//! which the sender does.
//!
//! The wire record is ~280 bytes (every optional column an `Option<u64>` of 16 bytes, three
//! vectors); copying it into the queue was most of what the shim added to a cheap call. A `Rec`
//! keeps the common scalar columns as plain words and one presence bit each (120 bytes: copied
//! inline, no `memcpy` call), and everything
//! of variable size (templates, info fields, found handles, mechanism parameters) in one
//! [`Extra`] box taken from a pool that the sender refills: once warm, a template call allocates
//! nothing on the calling thread.
//!
//! Template values are read through the allowlist before they get here (`capture`): a secret
//! attribute arrives as [`AttrValue::Redacted`], and only allowlisted values are copied, as raw
//! bytes into [`Extra::bytes`]. The sender turns them into values with the same
//! [`value_from_bytes`] the shim used before, so the wire record is unchanged.

use crossbeam_queue::ArrayQueue;
use p11trace_record::attr::{Attr, AttrType, Template};
use p11trace_record::params::MechParams;
use p11trace_record::policy::value_from_bytes;
use p11trace_record::wire::{CallRecord, InterfaceVersion};

/// The optional scalar columns, in [`Rec::scalars`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Col {
    SlotId,
    Session,
    Mechanism,
    Object,
    InLen,
    OutLen,
    CkFlags,
    OpId,
}

const COLS: usize = 8;
/// Presence bit of the interface version, after the scalars' bits.
const INTERFACE_BIT: u16 = 1 << COLS;

/// One attribute waiting to be sent: a finished [`Attr`], or a template attribute whose
/// allowlisted value was copied as raw bytes (`bytes[start..end]` of its [`Extra`]).
#[derive(Debug)]
pub enum Pending {
    Attr(Attr),
    Raw {
        template: Template,
        kind: u64,
        len: i64,
        start: u32,
        end: u32,
    },
}

/// The variable-size parts of a record, in a pooled box (capacities are kept between uses).
#[derive(Debug, Default)]
pub struct Extra {
    /// `attrs`: `None` = the column is null (no template argument).
    attrs: Vec<Pending>,
    has_attrs: bool,
    /// Raw allowlisted values of [`Pending::Raw`] attributes.
    bytes: Vec<u8>,
    out_objects: Vec<u64>,
    has_out_objects: bool,
    params: Option<MechParams>,
    /// The two columns only a few functions have (`C_Login`, `C_SetOperationState`, ...): kept
    /// out of [`Rec`] so that it stays within 128 bytes (copied inline, without a `memcpy` call).
    pub object2: Option<u64>,
    pub user_type: Option<u64>,
}

impl Extra {
    /// The attribute list, marking the column present.
    pub fn attrs(&mut self) -> &mut Vec<Pending> {
        self.has_attrs = true;
        &mut self.attrs
    }

    /// Appends a template attribute with the allowlisted `value` (at most `u32::MAX` bytes; the
    /// caller caps it at `MAX_VALUE_LEN`).
    pub fn push_raw(&mut self, template: Template, kind: u64, len: i64, value: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(value);
        let (Ok(start), Ok(end)) = (u32::try_from(start), u32::try_from(self.bytes.len())) else {
            self.bytes.truncate(start);
            return;
        };
        self.attrs().push(Pending::Raw {
            template,
            kind,
            len,
            start,
            end,
        });
    }

    /// The found or created handles, marking the column present.
    pub fn out_objects(&mut self) -> &mut Vec<u64> {
        self.has_out_objects = true;
        &mut self.out_objects
    }

    /// Fresh mechanism parameters, to fill in place (rendered by the sender).
    pub fn new_params(&mut self) -> &mut MechParams {
        self.params.insert(MechParams::default())
    }

    /// The mechanism parameters so far (a default when none).
    pub fn params(&mut self) -> &mut MechParams {
        self.params.get_or_insert_default()
    }

    fn clear(&mut self) {
        self.attrs.clear();
        self.has_attrs = false;
        self.bytes.clear();
        self.out_objects.clear();
        self.has_out_objects = false;
        self.params = None;
        self.object2 = None;
        self.user_type = None;
    }

    /// Moves the contents into `record`'s columns (the vectors of the record are new; this box
    /// keeps its own capacity).
    fn drain_into(&mut self, record: &mut CallRecord) {
        if self.has_attrs {
            let bytes = &self.bytes;
            let attrs = self.attrs.drain(..).map(|pending| match pending {
                Pending::Attr(attr) => attr,
                Pending::Raw {
                    template,
                    kind,
                    len,
                    start,
                    end,
                } => Attr {
                    template,
                    kind: AttrType::Attribute(kind),
                    len,
                    value: value_from_bytes(
                        kind,
                        bytes.get(start as usize..end as usize).unwrap_or_default(),
                    ),
                },
            });
            record.attrs = Some(attrs.collect());
        }
        if self.has_out_objects {
            record.out_objects = Some(self.out_objects.clone());
        }
        record.mech_params = self.params.take().and_then(|params| params.render());
        record.object2 = self.object2;
        record.user_type = self.user_type;
        self.clear();
    }
}

/// Boxes of [`Extra`] ready for use: calling threads take, the sender gives back.
pub type Pool = ArrayQueue<Box<Extra>>;

/// Most boxes a pool keeps (the rest are freed by the sender): at most ~3.5 KiB each (the box,
/// 16 attributes, 1 KiB of values, 128 handles; see `KEPT_*`), so a pool holds at most ~3.5 MiB
/// (~0.7 MiB of 4-attribute templates). The sender gives boxes back when it drains the queue
/// (continuously while there is work, else after up to 50 ms idle): a burst of more calls with
/// extras than this between two drains allocates for the rest, as before the pool.
pub const POOL_CAPACITY: usize = 1024;

/// Largest capacities a box may keep to go back to the pool: a call with a huge template or many
/// handles does not leave a large allocation behind for the life of the process.
const KEPT_ATTRS: usize = 16;
const KEPT_BYTES: usize = 1024;
const KEPT_OBJECTS: usize = 128;

/// A box from `pool`, or a new one when it is empty.
pub fn take(pool: &Pool) -> Box<Extra> {
    pool.pop().unwrap_or_default()
}

/// A call record as queued.
#[derive(Debug, Default)]
pub struct Rec {
    pub seq: u64,
    pub start_ns: i64,
    pub dur_ns: i64,
    pub rv: u64,
    scalars: [u64; COLS],
    /// A kernel thread id (`pid_t`).
    pub tid: i32,
    present: u16,
    pub func: u16,
    pub flags: u8,
    interface: [u8; 2],
    pub extra: Option<Box<Extra>>,
}

impl Rec {
    #[inline(always)]
    pub fn new(func: u16, flags: u8, interface: Option<InterfaceVersion>) -> Rec {
        let (present, interface) = match interface {
            Some(v) => (INTERFACE_BIT, [v.major, v.minor]),
            None => (0, [0, 0]),
        };
        Rec {
            seq: 0,
            tid: 0,
            start_ns: 0,
            dur_ns: 0,
            rv: 0,
            scalars: [0; COLS],
            present,
            func,
            flags,
            interface,
            extra: None,
        }
    }

    #[inline(always)]
    pub fn set(&mut self, col: Col, value: u64) {
        self.scalars[col as usize] = value;
        self.present |= 1 << col as u8;
    }

    /// An `i64` column (`in_len`, `out_len`), stored as its bits.
    #[inline(always)]
    pub fn set_signed(&mut self, col: Col, value: i64) {
        self.set(col, value as u64);
    }

    #[inline(always)]
    pub fn get(&self, col: Col) -> Option<u64> {
        (self.present & (1 << col as u8) != 0).then_some(self.scalars[col as usize])
    }

    fn signed(&self, col: Col) -> Option<i64> {
        self.get(col).map(|v| v as i64)
    }

    /// The wire record; the extra box goes back to `pool` (or is freed when the pool is full).
    pub fn into_record(self, pool: &Pool) -> CallRecord {
        let mut record = CallRecord {
            seq: self.seq,
            tid: i64::from(self.tid),
            start_ns: self.start_ns,
            dur_ns: self.dur_ns,
            func: self.func,
            flags: self.flags,
            interface: (self.present & INTERFACE_BIT != 0).then_some(InterfaceVersion {
                major: self.interface[0],
                minor: self.interface[1],
            }),
            rv: self.rv,
            slot_id: self.get(Col::SlotId),
            session: self.get(Col::Session),
            mechanism: self.get(Col::Mechanism),
            mech_params: None,
            object: self.get(Col::Object),
            object2: None,
            out_objects: None,
            user_type: None,
            in_len: self.signed(Col::InLen),
            out_len: self.signed(Col::OutLen),
            ck_flags: self.get(Col::CkFlags),
            op_id: self.get(Col::OpId),
            attrs: None,
        };
        if let Some(mut extra) = self.extra {
            extra.drain_into(&mut record);
            if extra.attrs.capacity() <= KEPT_ATTRS
                && extra.bytes.capacity() <= KEPT_BYTES
                && extra.out_objects.capacity() <= KEPT_OBJECTS
            {
                // A full pool frees the box.
                let _ = pool.push(extra);
            }
        }
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p11trace_record::attr::AttrValue;

    #[test]
    fn columns_and_extras_reach_the_wire_record_and_the_box_is_reused() {
        let pool = Pool::new(2);
        let mut rec = Rec::new(7, 1, Some(InterfaceVersion { major: 3, minor: 2 }));
        rec.set(Col::Session, 5);
        rec.set_signed(Col::OutLen, -1);
        let mut extra = take(&pool);
        extra.push_raw(Template::In, 0x0, 8, &2u64.to_ne_bytes());
        extra.push_raw(Template::In, 0x3, 5, b"label");
        extra.attrs().push(Pending::Attr(Attr {
            template: Template::In,
            kind: AttrType::Attribute(0x11),
            len: 32,
            value: AttrValue::Redacted,
        }));
        extra.out_objects().push(9);
        extra.user_type = Some(1);
        rec.extra = Some(extra);
        let record = rec.into_record(&pool);
        assert_eq!(record.func, 7);
        assert_eq!(
            record.interface,
            Some(InterfaceVersion { major: 3, minor: 2 })
        );
        assert_eq!(
            (record.session, record.out_len, record.slot_id),
            (Some(5), Some(-1), None)
        );
        let attrs = record.attrs.expect("attrs");
        assert_eq!(attrs[0].value, AttrValue::Ulong(2));
        assert_eq!(attrs[1].value, AttrValue::Text("label".into()));
        assert_eq!(attrs[2].value, AttrValue::Redacted);
        assert_eq!(record.out_objects, Some(vec![9]));
        assert_eq!((record.user_type, record.object2), (Some(1), None));
        let reused = take(&pool);
        assert!(reused.attrs.is_empty() && !reused.has_attrs && reused.bytes.is_empty());
        assert!(reused.attrs.capacity() >= 3, "the box keeps its capacity");
        // What a call copies into the queue (the wire record is ~280 bytes).
        assert_eq!(size_of::<Rec>(), 120);
        assert_eq!((size_of::<Pending>(), size_of::<Extra>()), (64, 424));
        let bare = Rec::new(1, 0, None).into_record(&pool);
        assert_eq!(
            (bare.interface, bare.attrs, bare.out_objects),
            (None, None, None)
        );
    }
}
