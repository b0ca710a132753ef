//! `op_id`: ties `C_XInit` → `C_XUpdate`* → `C_XFinal` (or a single-part `C_X`) on one session.
//!
//! Only calls that belong to an operation take the lock; `C_GetSessionInfo` and friends never do.

use std::collections::HashMap;
use std::sync::Mutex;

use p11trace_ffi::*;
use p11trace_record::functions::{OpKind, OpStage};

#[derive(Default)]
pub struct Ops {
    inner: Mutex<OpsInner>,
}

#[derive(Default)]
struct OpsInner {
    next_id: u64,
    active: HashMap<(u64, OpKind), u64>,
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
        let session = session?;
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = (session, kind);
        match stage {
            OpStage::Init => {
                if rv != CKR_OK {
                    return None;
                }
                inner.next_id += 1;
                let id = inner.next_id;
                inner.active.insert(key, id);
                Some(id)
            }
            OpStage::Update | OpStage::Message => {
                let id = inner.active.get(&key).copied();
                if rv != CKR_OK && rv != CKR_BUFFER_TOO_SMALL {
                    // Per PKCS#11, a failing part ends the operation.
                    inner.active.remove(&key);
                }
                id
            }
            OpStage::Final | OpStage::Single => {
                let id = inner.active.get(&key).copied();
                let still_running = rv == CKR_BUFFER_TOO_SMALL || (rv == CKR_OK && size_query);
                if !still_running {
                    inner.active.remove(&key);
                }
                id
            }
        }
    }

    /// Drops the operations of `session` (closed), or of every session (`None`).
    pub fn forget(&self, session: Option<u64>) {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match session {
            Some(session) => inner.active.retain(|(s, _), _| *s != session),
            None => inner.active.clear(),
        }
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
}
