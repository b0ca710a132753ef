//! `p11client` modes that drive the shim past its contracts: a module lying about sizes
//! (`sizes`), same-version interface twins (`interface-twins`), and operations on many threads at
//! once (`digests`). See the usage in `p11client.rs`.

use std::ptr;
use std::sync::atomic::Ordering;

use p11trace_tests::module::Module;
use p11trace_tests::p11;
use pkcs11_sys::*;
use serde_json::json;

use super::{CALLS, Client, c_get_interface, interface_list};

/// The label of the object `sizes` creates.
const SIZES_LABEL: &[u8] = b"sizes-label";

pub(super) fn sizes(module: &Module, pin: &str) -> serde_json::Value {
    module.init();
    let session = module.session(module.first_token_slot());
    module.login(session, pin).expect("C_Login");
    let mut class: CK_OBJECT_CLASS = CKO_DATA;
    let mut no: CK_BBOOL = CK_FALSE as CK_BBOOL;
    let mut label = SIZES_LABEL.to_vec();
    let attribute = |type_, value: *mut u8, len: usize| CK_ATTRIBUTE {
        type_,
        pValue: value.cast(),
        ulValueLen: len as CK_ULONG,
    };
    let mut template = [
        attribute(
            CKA_CLASS,
            (&raw mut class).cast(),
            size_of::<CK_OBJECT_CLASS>(),
        ),
        attribute(CKA_TOKEN, &raw mut no, 1),
        attribute(CKA_LABEL, label.as_mut_ptr(), label.len()),
    ];
    let mut object: CK_OBJECT_HANDLE = 0;
    let rv = p11!(
        module,
        C_CreateObject(
            session,
            template.as_mut_ptr(),
            template.len() as CK_ULONG,
            &mut object
        )
    );
    assert_eq!(rv, CKR_OK, "C_CreateObject");
    assert_eq!(
        p11!(module, C_FindObjectsInit(session, ptr::null_mut(), 0)),
        CKR_OK
    );
    // Heap buffers of exactly the sizes passed: a read past them is memcheck's "Invalid read".
    let mut handles: Box<[CK_OBJECT_HANDLE]> = vec![0; 1].into_boxed_slice();
    let mut claimed_count: CK_ULONG = 0;
    let rv = p11!(
        module,
        C_FindObjects(session, handles.as_mut_ptr(), 1, &mut claimed_count)
    );
    assert_eq!(rv, CKR_OK, "C_FindObjects");
    assert_eq!(p11!(module, C_FindObjectsFinal(session)), CKR_OK);
    let mut label_out: Box<[u8]> = vec![0; SIZES_LABEL.len()].into_boxed_slice();
    let mut class_out: Box<[u8]> = vec![0; size_of::<CK_OBJECT_CLASS>()].into_boxed_slice();
    let mut out = [
        attribute(CKA_LABEL, label_out.as_mut_ptr(), label_out.len()),
        attribute(CKA_CLASS, class_out.as_mut_ptr(), class_out.len()),
    ];
    let rv = p11!(
        module,
        C_GetAttributeValue(session, object, out.as_mut_ptr(), out.len() as CK_ULONG)
    );
    assert_eq!(rv, CKR_OK, "C_GetAttributeValue");
    assert_eq!(p11!(module, C_CloseSession(session)), CKR_OK);
    assert_eq!(p11!(module, C_Finalize(ptr::null_mut())), CKR_OK);
    json!({
        "pid": std::process::id(),
        "calls": CALLS.load(Ordering::Relaxed),
        "object": object,
        "found": handles[0],
        "claimed_count": claimed_count,
        "claimed_label_len": out[0].ulValueLen,
        "claimed_class_len": out[1].ulValueLen,
        "label": String::from_utf8_lossy(&label_out),
    })
}

/// How many different values.
pub(super) fn distinct(values: &[usize]) -> usize {
    values
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

/// `interface-list`, then `C_GetInterface("PKCS 11", 3.0, flags)` for flags 0 and
/// `CKF_INTERFACE_FORK_SAFE`.
pub(super) fn interface_twins(module: &Module) -> serde_json::Value {
    let mut report = interface_list(module);
    let get_interface = c_get_interface(module);
    let mut answers = Vec::new();
    let mut lists = Vec::new();
    for flags in [0, CKF_INTERFACE_FORK_SAFE] {
        let mut version = CK_VERSION { major: 3, minor: 0 };
        let mut interface: CK_INTERFACE_PTR = ptr::null_mut();
        // SAFETY: valid name, version and out-pointer.
        let rv = module.tally(unsafe {
            get_interface(
                c"PKCS 11".as_ptr().cast_mut().cast(),
                &mut version,
                &mut interface,
                flags,
            )
        });
        assert_eq!(rv, CKR_OK, "C_GetInterface(3.0, flags {flags})");
        // SAFETY: a successful C_GetInterface returned a valid interface.
        let interface = unsafe { &*interface };
        lists.push(interface.pFunctionList as usize);
        answers.push(json!({ "asked": flags, "flags": interface.flags }));
    }
    report["get_interface"] = json!(answers);
    report["get_interface_distinct_lists"] = json!(distinct(&lists));
    report["calls"] = json!(CALLS.load(Ordering::Relaxed));
    report
}

pub(super) fn digests(module: &Module, threads: usize, operations: usize) -> serde_json::Value {
    module.init();
    let slot = module.first_token_slot();
    let sessions: Vec<CK_SESSION_HANDLE> = (0..threads).map(|_| module.session(slot)).collect();
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        for &session in &sessions {
            scope.spawn(move || {
                let data = [0x5au8; 64];
                let mut digest = [0u8; 32];
                for _ in 0..operations {
                    let mut sha256 = CK_MECHANISM {
                        mechanism: CKM_SHA256,
                        pParameter: ptr::null_mut(),
                        ulParameterLen: 0,
                    };
                    assert_eq!(p11!(module, C_DigestInit(session, &mut sha256)), CKR_OK);
                    let mut len = digest.len() as CK_ULONG;
                    let rv = p11!(
                        module,
                        C_Digest(
                            session,
                            data.as_ptr().cast_mut(),
                            data.len() as CK_ULONG,
                            digest.as_mut_ptr(),
                            &mut len
                        )
                    );
                    assert_eq!(rv, CKR_OK);
                }
            });
        }
    });
    let elapsed = started.elapsed();
    for session in sessions {
        assert_eq!(p11!(module, C_CloseSession(session)), CKR_OK);
    }
    assert_eq!(p11!(module, C_Finalize(ptr::null_mut())), CKR_OK);
    json!({ "pid": std::process::id(), "calls": CALLS.load(Ordering::Relaxed), "elapsed_ms": elapsed.as_secs_f64() * 1e3 })
}
