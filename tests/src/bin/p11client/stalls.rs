//! `p11client` modes that meet a stalled or refusing recorder, and the largest records: audit
//! mode's refusals counted (`refusable`), a thread-less host held between two bursts
//! (`nothreads-held`), and templates of hundreds of long labels (`big-templates`). See the usage
//! in `p11client.rs`.

use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use p11trace_tests::module::Module;
use p11trace_tests::p11;
use pkcs11_sys::*;
use serde_json::json;

use super::{CALLS, Client};

/// Refused calls: audit mode answers `CKR_GENERAL_ERROR` for a call it cannot record.
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Repeats `call` while it is refused (at most 30 s), counting the refusals.
fn until_admitted(mut call: impl FnMut() -> CK_RV) -> CK_RV {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rv = call();
        if rv != CKR_GENERAL_ERROR || Instant::now() > deadline {
            return rv;
        }
        REFUSED.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub(super) fn refusable(module: &Module, millis: u64) -> serde_json::Value {
    assert_eq!(
        until_admitted(|| module.initialize(CKF_OS_LOCKING_OK)),
        CKR_OK
    );
    let mut slots: [CK_SLOT_ID; 16] = [0; 16];
    let rv = until_admitted(|| {
        let mut count = slots.len() as CK_ULONG;
        p11!(
            module,
            C_GetSlotList(CK_TRUE as CK_BBOOL, slots.as_mut_ptr(), &mut count)
        )
    });
    assert_eq!(rv, CKR_OK, "C_GetSlotList");
    let (slot, flags, mut session) = (slots[0], CKF_SERIAL_SESSION, 0);
    let rv = until_admitted(|| {
        p11!(
            module,
            C_OpenSession(slot, flags, ptr::null_mut(), None, &mut session)
        )
    });
    assert_eq!(rv, CKR_OK, "C_OpenSession");
    let end = Instant::now() + Duration::from_millis(millis);
    while Instant::now() < end {
        // SAFETY: plain data.
        let mut info: CK_SESSION_INFO = unsafe { std::mem::zeroed() };
        match p11!(module, C_GetSessionInfo(session, &mut info)) {
            CKR_OK => {}
            CKR_GENERAL_ERROR => {
                REFUSED.fetch_add(1, Ordering::Relaxed);
            }
            other => panic!("C_GetSessionInfo: {other:#x}"),
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    assert_eq!(
        until_admitted(|| p11!(module, C_CloseSession(session))),
        CKR_OK
    );
    assert_eq!(until_admitted(|| module.finalize()), CKR_OK);
    let (calls, refused) = (
        CALLS.load(Ordering::Relaxed),
        REFUSED.load(Ordering::Relaxed),
    );
    json!({ "pid": std::process::id(), "calls": calls, "refused": refused, "ran": calls - refused })
}

pub(super) fn no_threads_held(module: &Module, before: usize, after: usize) -> serde_json::Value {
    module.init_with(CKF_OS_LOCKING_OK | CKF_LIBRARY_CANT_CREATE_OS_THREADS);
    let session = module.session(module.first_token_slot());
    for _ in 0..before {
        module.session_info(session);
    }
    println!("ready");
    let _ = std::io::stdin().read_line(&mut String::new());
    let mut longest = Duration::ZERO;
    for _ in 0..after {
        let started = Instant::now();
        module.session_info(session);
        longest = longest.max(started.elapsed());
    }
    assert_eq!(p11!(module, C_CloseSession(session)), CKR_OK);
    let started = Instant::now();
    assert_eq!(p11!(module, C_Finalize(ptr::null_mut())), CKR_OK);
    let finalize = started.elapsed();
    json!({
        "pid": std::process::id(), "calls": CALLS.load(Ordering::Relaxed),
        "longest_call_ms": longest.as_millis() as u64, "finalize_ms": finalize.as_millis() as u64,
    })
}

/// A template of `count` labels, each `value` (CKA_LABEL = 3).
fn labels(value: &[u8], count: usize) -> Vec<CK_ATTRIBUTE> {
    (0..count)
        .map(|_| CK_ATTRIBUTE {
            type_: 3,
            pValue: value.as_ptr().cast_mut().cast(),
            ulValueLen: value.len() as CK_ULONG,
        })
        .collect()
}

pub(super) fn big_templates(module: &Module, calls: usize) -> serde_json::Value {
    module.init();
    let session = module.session(module.first_token_slot());
    let (text, raw) = ([b'L'; 256], [0xffu8; 256]);
    let mut find = labels(&text, 256);
    let (mut public, mut private) = (labels(&raw, 256), labels(&raw, 256));
    let mut mechanism = CK_MECHANISM {
        mechanism: CKM_EC_KEY_PAIR_GEN,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    for _ in 0..calls {
        let rv = p11!(
            module,
            C_FindObjectsInit(session, find.as_mut_ptr(), find.len() as CK_ULONG)
        );
        if rv == CKR_OK {
            assert_eq!(p11!(module, C_FindObjectsFinal(session)), CKR_OK);
        }
        // A public session cannot make keys: the call fails, but its templates are recorded.
        let _ = module.generate_key_pair(session, &mut mechanism, &mut public, &mut private);
    }
    assert_eq!(p11!(module, C_CloseSession(session)), CKR_OK);
    assert_eq!(p11!(module, C_Finalize(ptr::null_mut())), CKR_OK);
    json!({ "pid": std::process::id(), "calls": CALLS.load(Ordering::Relaxed) })
}
