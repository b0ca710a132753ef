//! `op_id`: ties `C_XInit` → `C_XUpdate`* → `C_XFinal` (or a single-part `C_X`) on one session.
//!
//! Lock-free on the hot path: each session has a slot of its own in a fixed table (found by a
//! hash of its handle), holding the running operation of each kind as an atomic. A call touches
//! only its session's slot, so threads on different sessions never wait for each other, and no
//! call takes a lock. Only a session whose slot another live session holds (a hash collision:
//! more than a few hundred sessions at once, or handles that collide) goes to a locked overflow
//! map, and only while such sessions exist do calls look there.
//!
//! PKCS#11 leaves one session's calls to the application to serialise; calls that race on one
//! session (or close it while it is in use) may get a wrong `op_id`, never undefined behaviour.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use p11trace_ffi::*;
use p11trace_record::functions::{OpKind, OpStage};

/// Operation kinds a slot has room for (`OpKind` has 13).
const KINDS: usize = 16;
const _: () = assert!((OpKind::VerifySignature as usize) < KINDS);

/// Session slots (a power of two).
const SLOTS: usize = 256;

/// No session: `CK_INVALID_HANDLE` is never a session.
const FREE: u64 = 0;

struct Slot {
    session: AtomicU64,
    /// The running operation of each kind (0: none).
    ops: [AtomicU64; KINDS],
}

pub struct Ops {
    next_id: AtomicU64,
    slots: Box<[Slot]>,
    /// Sessions whose slot another session held when their first operation began.
    overflow: Mutex<HashMap<(u64, OpKind), u64>>,
    /// Entries in `overflow`: while 0, calls never look there (nor lock).
    overflowing: AtomicUsize,
}

impl Default for Ops {
    fn default() -> Self {
        Ops {
            next_id: AtomicU64::new(0),
            slots: (0..SLOTS)
                .map(|_| Slot {
                    session: AtomicU64::new(FREE),
                    ops: [const { AtomicU64::new(0) }; KINDS],
                })
                .collect(),
            overflow: Mutex::new(HashMap::new()),
            overflowing: AtomicUsize::new(0),
        }
    }
}

/// The slot of `session`: Fibonacci hashing, so sequential handles land in different slots.
#[inline]
fn index(session: u64) -> usize {
    (session.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as usize % SLOTS
}

/// Ends every operation recorded in `slot` and frees it, if `session` still holds it.
fn free(slot: &Slot, session: u64) {
    for op in &slot.ops {
        op.store(0, Ordering::Relaxed);
    }
    let _ = slot
        .session
        .compare_exchange(session, FREE, Ordering::AcqRel, Ordering::Relaxed);
}

/// What a stage does to the running operation, given the call's result.
enum Step {
    /// A successful `C_XInit`: a new operation.
    Start,
    /// The operation goes on.
    Keep,
    /// The operation ends (done, or a failing part).
    End,
    /// Nothing to record (a failing `C_XInit`).
    Nothing,
}

fn step(stage: OpStage, rv: CK_RV, size_query: bool) -> Step {
    match stage {
        OpStage::Init if rv == CKR_OK => Step::Start,
        OpStage::Init => Step::Nothing,
        // Per PKCS#11, a failing part ends the operation.
        OpStage::Update | OpStage::Message if rv == CKR_OK || rv == CKR_BUFFER_TOO_SMALL => {
            Step::Keep
        }
        OpStage::Update | OpStage::Message => Step::End,
        OpStage::Final | OpStage::Single
            if rv == CKR_BUFFER_TOO_SMALL || (rv == CKR_OK && size_query) =>
        {
            Step::Keep
        }
        OpStage::Final | OpStage::Single => Step::End,
    }
}

impl Ops {
    /// The `op_id` of a call at `stage` of `kind` on `session`, updating the active operations.
    pub fn track(
        &self,
        session: Option<u64>,
        kind: OpKind,
        stage: OpStage,
        rv: CK_RV,
        size_query: bool,
    ) -> Option<u64> {
        let session = session.filter(|&s| s != FREE)?;
        let step = step(stage, rv, size_query);
        if matches!(step, Step::Nothing) {
            return None;
        }
        let slot = self.slot_of(session, matches!(step, Step::Start));
        let Some(slot) = slot else {
            return self.track_overflow(session, kind, step);
        };
        let op = &slot.ops[kind as usize];
        let id = match step {
            Step::Start => {
                let id = self.new_id();
                op.store(id, Ordering::Relaxed);
                id
            }
            Step::Keep => op.load(Ordering::Relaxed),
            Step::End => op.swap(0, Ordering::Relaxed),
            Step::Nothing => 0,
        };
        (id != 0).then_some(id)
    }

    fn new_id(&self) -> u64 {
        self.next_id
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1)
    }

    /// The slot `session` owns; with `claim`, a free slot becomes its own. `None`: another
    /// session holds it (the session is, or goes, in the overflow map).
    #[inline]
    fn slot_of(&self, session: u64, claim: bool) -> Option<&Slot> {
        let slot = &self.slots[index(session)];
        let held = slot.session.load(Ordering::Acquire);
        if held == session {
            return Some(slot);
        }
        if claim
            && held == FREE
            && slot
                .session
                .compare_exchange(FREE, session, Ordering::AcqRel, Ordering::Acquire)
                .is_ok_and(|_| {
                    // A slot freed while an operation was recorded in it starts clean.
                    for op in &slot.ops {
                        op.store(0, Ordering::Relaxed);
                    }
                    true
                })
        {
            return Some(slot);
        }
        None
    }

    #[cold]
    fn track_overflow(&self, session: u64, kind: OpKind, step: Step) -> Option<u64> {
        if !matches!(step, Step::Start) && self.overflowing.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut overflow = self
            .overflow
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = (session, kind);
        let id = match step {
            Step::Start => {
                let id = self.new_id();
                overflow.insert(key, id);
                Some(id)
            }
            Step::Keep => overflow.get(&key).copied(),
            Step::End => overflow.remove(&key),
            Step::Nothing => None,
        };
        self.overflowing.store(overflow.len(), Ordering::Release);
        id
    }

    /// Drops the operations of `session` (closed), or of every session (`None`).
    pub fn forget(&self, session: Option<u64>) {
        match session {
            Some(session) => {
                let slot = &self.slots[index(session)];
                if slot.session.load(Ordering::Acquire) == session {
                    free(slot, session);
                }
            }
            None => {
                for slot in self.slots.iter() {
                    let held = slot.session.load(Ordering::Acquire);
                    if held != FREE {
                        free(slot, held);
                    }
                }
            }
        }
        if self.overflowing.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut overflow = self
            .overflow
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match session {
            Some(session) => overflow.retain(|(s, _), _| *s != session),
            None => overflow.clear(),
        }
        self.overflowing.store(overflow.len(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_update_final_share_one_id_and_a_size_query_keeps_it_open() {
        let ops = Ops::default();
        let id = ops.track(Some(1), OpKind::Sign, OpStage::Init, CKR_OK, false);
        assert_eq!(id, Some(1));
        assert_eq!(
            ops.track(Some(1), OpKind::Sign, OpStage::Single, CKR_OK, true),
            id
        );
        assert_eq!(
            ops.track(Some(1), OpKind::Sign, OpStage::Single, CKR_OK, false),
            id
        );
        assert_eq!(
            ops.track(Some(1), OpKind::Sign, OpStage::Single, CKR_OK, false),
            None
        );
        let other = ops.track(Some(2), OpKind::Digest, OpStage::Init, CKR_OK, false);
        assert_eq!(other, Some(2));
        assert_eq!(
            ops.track(Some(2), OpKind::Digest, OpStage::Update, CKR_OK, false),
            other
        );
        assert_eq!(
            ops.track(Some(2), OpKind::Digest, OpStage::Final, CKR_OK, false),
            other
        );
        assert_eq!(
            ops.track(
                Some(3),
                OpKind::Sign,
                OpStage::Init,
                CKR_KEY_HANDLE_INVALID,
                false
            ),
            None
        );
    }

    #[test]
    fn colliding_sessions_overflow_and_closing_frees_their_operations() {
        let ops = Ops::default();
        // More sessions than slots: some must share a slot's hash and go to the overflow map.
        let sessions: Vec<u64> = (1..=2 * SLOTS as u64).collect();
        let ids: Vec<Option<u64>> = sessions
            .iter()
            .map(|&s| ops.track(Some(s), OpKind::Digest, OpStage::Init, CKR_OK, false))
            .collect();
        assert!(ops.overflowing.load(Ordering::Relaxed) > 0);
        for (&session, &id) in sessions.iter().zip(&ids) {
            assert!(id.is_some());
            assert_eq!(
                ops.track(
                    Some(session),
                    OpKind::Digest,
                    OpStage::Update,
                    CKR_OK,
                    false
                ),
                id,
                "session {session}"
            );
        }
        ops.forget(Some(1));
        assert_eq!(
            ops.track(Some(1), OpKind::Digest, OpStage::Final, CKR_OK, false),
            None
        );
        ops.forget(None);
        assert_eq!(ops.overflowing.load(Ordering::Relaxed), 0);
        for &session in &sessions {
            assert_eq!(
                ops.track(Some(session), OpKind::Digest, OpStage::Final, CKR_OK, false),
                None
            );
        }
    }

    #[test]
    fn threads_on_their_own_sessions_keep_their_own_operations() {
        let ops = Ops::default();
        std::thread::scope(|scope| {
            for session in 1..=8u64 {
                let ops = &ops;
                scope.spawn(move || {
                    for _ in 0..10_000 {
                        let id =
                            ops.track(Some(session), OpKind::Sign, OpStage::Init, CKR_OK, false);
                        assert!(id.is_some());
                        let again =
                            ops.track(Some(session), OpKind::Sign, OpStage::Single, CKR_OK, false);
                        assert_eq!(again, id);
                    }
                });
            }
        });
        assert_eq!(ops.next_id.load(Ordering::Relaxed), 80_000);
    }
}
