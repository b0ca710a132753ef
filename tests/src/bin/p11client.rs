//! `p11client`: a small PKCS#11 client for the end-to-end tests. It loads a module by path (the
//! shim, SoftHSM2, Kryoptic), makes calls in a known shape, counts every call it makes, and prints
//! what it did as one JSON line, so tests compare the recorded rows with the client's own count.
//!
//! Usage: `p11client MODULE MODE ARGS…`
//! - `threads N M`   — N threads, each opens a session and makes M `C_GetSessionInfo` calls.
//! - `digests N M`   — N threads, each opens a session and makes M digest operations
//!   (`C_DigestInit(SHA-256)` + `C_Digest` of 64 bytes); reports the wall-clock time they took.
//! - `fork N K`      — K calls before each of N forks; each child re-initialises, makes K calls,
//!   finalises and prints its own line.
//! - `burst M`       — M `C_GetSessionInfo` calls as fast as possible.
//! - `paced M MS`    — M calls, MS milliseconds apart.
//! - `interfaces PIN` — `C_GetInterface("PKCS 11", 3.0)` and `(3.2)`, then `C_LoginUser`,
//!   `C_SessionCancel` and friends through each table.
//! - `noexit M`      — like `burst`, but exits without `C_Finalize`.
//! - `nothreads M`   — like `burst`, with `CKF_LIBRARY_CANT_CREATE_OS_THREADS`; reports how many
//!   threads the process has before `C_Finalize`.
//! - `interface-list` — `C_GetInterfaceList`, then the vendor interface's `ping`, if any.
//! - `refusable MS`  — `C_GetSessionInfo` for MS milliseconds; a refused call (audit mode's
//!   `CKR_GENERAL_ERROR`) is counted and the loop carries on. Reports `ran` and `refused`.
//! - `nothreads-held K M` — like `nothreads`: K calls, then prints `ready` and waits for a line
//!   on stdin, then M calls; reports the longest call and how long `C_Finalize` took.
//! - `big-templates N` — N `C_FindObjectsInit` with 256 labels of 256 bytes, and N
//!   `C_GenerateKeyPair` whose two templates hold 256 labels of 256 non-UTF-8 bytes each.
//! - `interface-twins` — `interface-list`, then `C_GetInterface("PKCS 11", 3.0)` without and with
//!   `CKF_INTERFACE_FORK_SAFE`; reports each answer's flags and which tables are distinct.
//! - `sizes PIN`     — logs in, creates a data object (label `sizes-label`), finds it with a one-handle
//!   array and reads its `CKA_LABEL` and `CKA_CLASS` into heap buffers of exactly their sizes
//!   (so memcheck sees any read past them); reports the lengths and count the module claimed.

#![allow(clippy::missing_safety_doc)]

use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use p11trace_tests::module::Module;

/// The modes that drive the shim past its contracts (sizes, interface twins, digests).
#[path = "p11client/contract.rs"]
mod contract;
/// The modes that meet a stalled recorder and the largest records.
#[path = "p11client/stalls.rs"]
mod stalls;
use p11trace_tests::p11;
use pkcs11_sys::*;
use serde_json::json;

/// Every PKCS#11 call this process makes (the module counts the calls made through it).
static CALLS: AtomicU64 = AtomicU64::new(0);

/// The client's own calls on top of the shared loader: each asserts success.
trait Client {
    fn init_with(&self, flags: CK_FLAGS);
    fn init(&self) {
        self.init_with(CKF_OS_LOCKING_OK);
    }
    fn first_token_slot(&self) -> CK_SLOT_ID;
    fn session(&self, slot: CK_SLOT_ID) -> CK_SESSION_HANDLE;
    fn session_info(&self, session: CK_SESSION_HANDLE);
}

impl Client for Module {
    fn init_with(&self, flags: CK_FLAGS) {
        let rv = self.initialize(flags);
        assert!(
            rv == CKR_OK || rv == CKR_CRYPTOKI_ALREADY_INITIALIZED,
            "C_Initialize: {rv:#x}"
        );
    }

    fn first_token_slot(&self) -> CK_SLOT_ID {
        self.slots().expect("C_GetSlotList")[0]
    }

    fn session(&self, slot: CK_SLOT_ID) -> CK_SESSION_HANDLE {
        self.open_session(slot).expect("C_OpenSession")
    }

    fn session_info(&self, session: CK_SESSION_HANDLE) {
        // SAFETY: plain data.
        let mut info: CK_SESSION_INFO = unsafe { std::mem::zeroed() };
        assert_eq!(p11!(self, C_GetSessionInfo(session, &mut info)), CKR_OK);
    }
}

fn gettid() -> i64 {
    // SAFETY: no preconditions.
    i64::from(unsafe { libc::gettid() })
}

fn threads(module: &Module, threads: usize, calls: usize) -> serde_json::Value {
    module.init();
    let slot = module.first_token_slot();
    let per_thread: Vec<serde_json::Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let session = module.session(slot);
                    for _ in 0..calls {
                        module.session_info(session);
                    }
                    assert_eq!(p11!(module, C_CloseSession(session)), CKR_OK);
                    json!({ "tid": gettid(), "calls": calls + 2, "session": session })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(p11!(module, C_Finalize(ptr::null_mut())), CKR_OK);
    json!({ "pid": std::process::id(), "main_tid": gettid(), "calls": CALLS.load(Ordering::Relaxed), "threads": per_thread })
}

fn fork(module: &Module, children: usize, burst: usize) -> serde_json::Value {
    module.init();
    let slot = module.first_token_slot();
    let session = module.session(slot);
    let mut pids = Vec::new();
    for _ in 0..children {
        for _ in 0..burst {
            module.session_info(session);
        }
        // SAFETY: fork in a single-threaded test client (the shim's sender thread is not copied).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            CALLS.store(0, Ordering::Relaxed);
            module.init();
            let slot = module.first_token_slot();
            let session = module.session(slot);
            for _ in 0..burst {
                module.session_info(session);
            }
            let _ = p11!(module, C_CloseSession(session));
            let _ = p11!(module, C_Finalize(ptr::null_mut()));
            println!(
                "{}",
                json!({ "pid": std::process::id(), "calls": CALLS.load(Ordering::Relaxed), "child": true })
            );
            std::process::exit(0);
        }
        pids.push(pid);
    }
    let mut failures = 0;
    for pid in pids {
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            failures += 1;
        }
    }
    let _ = p11!(module, C_CloseSession(session));
    assert_eq!(p11!(module, C_Finalize(ptr::null_mut())), CKR_OK);
    json!({ "pid": std::process::id(), "calls": CALLS.load(Ordering::Relaxed), "child": false, "failed_children": failures })
}

fn burst(module: &Module, calls: usize, pace_ms: u64, finalize: bool) -> serde_json::Value {
    module.init();
    let slot = module.first_token_slot();
    let session = module.session(slot);
    for _ in 0..calls {
        module.session_info(session);
        if pace_ms > 0 {
            std::thread::sleep(Duration::from_millis(pace_ms));
        }
    }
    assert_eq!(p11!(module, C_CloseSession(session)), CKR_OK);
    if finalize {
        assert_eq!(p11!(module, C_Finalize(ptr::null_mut())), CKR_OK);
    }
    json!({ "pid": std::process::id(), "calls": CALLS.load(Ordering::Relaxed) })
}

fn thread_count() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Threads:")
                    .map(|v| v.trim().parse().unwrap_or(-1))
            })
        })
        .unwrap_or(-1)
}

fn no_threads(module: &Module, calls: usize) -> serde_json::Value {
    module.init_with(CKF_OS_LOCKING_OK | CKF_LIBRARY_CANT_CREATE_OS_THREADS);
    let slot = module.first_token_slot();
    let session = module.session(slot);
    for _ in 0..calls {
        module.session_info(session);
    }
    assert_eq!(p11!(module, C_CloseSession(session)), CKR_OK);
    let threads = thread_count();
    assert_eq!(p11!(module, C_Finalize(ptr::null_mut())), CKR_OK);
    json!({ "pid": std::process::id(), "calls": CALLS.load(Ordering::Relaxed), "threads_before_finalize": threads })
}

/// A vendor interface's function list: a version and one `ping`.
#[repr(C)]
struct VendorList {
    version: CK_VERSION,
    ping: unsafe extern "C" fn(CK_ULONG) -> CK_RV,
}

fn interface_list(module: &Module) -> serde_json::Value {
    // SAFETY: the PKCS#11 prototype of C_GetInterfaceList.
    let list_fn = unsafe {
        module.symbol::<unsafe extern "C" fn(CK_INTERFACE_PTR, CK_ULONG_PTR) -> CK_RV>(
            c"C_GetInterfaceList",
        )
    }
    .expect("C_GetInterfaceList");
    let mut count: CK_ULONG = 0;
    // SAFETY: size query.
    assert_eq!(
        module.tally(unsafe { list_fn(ptr::null_mut(), &mut count) }),
        CKR_OK
    );
    let empty = CK_INTERFACE {
        pInterfaceName: ptr::null_mut(),
        pFunctionList: ptr::null_mut(),
        flags: 0,
    };
    let mut interfaces = vec![empty; count as usize];
    // SAFETY: a buffer of `count` entries.
    assert_eq!(
        module.tally(unsafe { list_fn(interfaces.as_mut_ptr(), &mut count) }),
        CKR_OK
    );
    let mut listed = Vec::new();
    let mut lists = Vec::new();
    let mut ping = None;
    for interface in &interfaces[..count as usize] {
        // SAFETY: filled entries: NUL-terminated names, lists starting with their version.
        let name = unsafe { std::ffi::CStr::from_ptr(interface.pInterfaceName.cast()) }
            .to_string_lossy()
            .into_owned();
        let version = unsafe { *interface.pFunctionList.cast::<CK_VERSION>() };
        if name != "PKCS 11" {
            // SAFETY: the test vendor interface's list (see tests/p11count).
            let vendor = unsafe { &*interface.pFunctionList.cast::<VendorList>() };
            ping = Some(unsafe { (vendor.ping)(42) });
        }
        listed.push(json!({
            "name": name,
            "version": format!("{}.{}", version.major, version.minor),
            "flags": interface.flags,
        }));
        lists.push(interface.pFunctionList as usize);
    }
    json!({
        "pid": std::process::id(),
        "calls": CALLS.load(Ordering::Relaxed),
        "interfaces": listed,
        "distinct_lists": contract::distinct(&lists),
        "vendor_ping": ping,
    })
}

/// The module's exported `C_GetInterface`.
fn c_get_interface(
    module: &Module,
) -> unsafe extern "C" fn(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS) -> CK_RV
{
    // SAFETY: the PKCS#11 prototype of C_GetInterface.
    unsafe {
        module.symbol::<unsafe extern "C" fn(
            CK_UTF8CHAR_PTR,
            CK_VERSION_PTR,
            CK_INTERFACE_PTR_PTR,
            CK_FLAGS,
        ) -> CK_RV>(c"C_GetInterface")
    }
    .expect("the module exports C_GetInterface")
}

fn interfaces(module: &Module, pin: &str) -> serde_json::Value {
    let get_interface = c_get_interface(module);
    let mut results = Vec::new();
    let mut initialized = false;
    for (major, minor) in [(3u8, 0u8), (3, 2)] {
        let mut version = CK_VERSION { major, minor };
        let mut interface: CK_INTERFACE_PTR = ptr::null_mut();
        let name = c"PKCS 11";
        // SAFETY: valid name, version and out-pointer.
        let rv = module.tally(unsafe {
            get_interface(
                name.as_ptr().cast_mut().cast(),
                &mut version,
                &mut interface,
                0,
            )
        });
        if rv != CKR_OK {
            results.push(json!({ "version": format!("{major}.{minor}"), "get_interface": rv }));
            continue;
        }
        // SAFETY: a successful C_GetInterface returns a valid interface with a 3.x function list.
        let list = unsafe { (*interface).pFunctionList }.cast::<CK_FUNCTION_LIST_3_0>();
        let table = Table3(list, module);
        // SAFETY: the list's version field.
        let reported = unsafe { (*list).version };
        if !initialized {
            let rv =
                table.call(|l| unsafe { l.C_Initialize.expect("C_Initialize")(ptr::null_mut()) });
            assert_eq!(rv, CKR_OK);
            initialized = true;
        }
        let mut count: CK_ULONG = 1;
        let mut slot: CK_SLOT_ID = 0;
        table.call(|l| unsafe {
            l.C_GetSlotList.expect("C_GetSlotList")(CK_TRUE as CK_BBOOL, &mut slot, &mut count)
        });
        let mut session: CK_SESSION_HANDLE = 0;
        let flags = CKF_SERIAL_SESSION | CKF_RW_SESSION;
        let open = table.call(|l| unsafe {
            l.C_OpenSession.expect("C_OpenSession")(
                slot,
                flags,
                ptr::null_mut(),
                None,
                &mut session,
            )
        });
        let user = c"user";
        let login_user = table.call(|l| unsafe {
            l.C_LoginUser.expect("C_LoginUser")(
                session,
                CKU_USER,
                pin.as_ptr().cast_mut(),
                pin.len() as CK_ULONG,
                user.as_ptr().cast_mut().cast(),
                4,
            )
        });
        let cancel = table
            .call(|l| unsafe { l.C_SessionCancel.expect("C_SessionCancel")(session, CKF_SIGN) });
        let logout = table.call(|l| unsafe { l.C_Logout.expect("C_Logout")(session) });
        let close = table.call(|l| unsafe { l.C_CloseSession.expect("C_CloseSession")(session) });
        results.push(json!({
            "version": format!("{major}.{minor}"),
            "reported_version": format!("{}.{}", reported.major, reported.minor),
            "open_session": open, "login_user": login_user, "session_cancel": cancel, "logout": logout, "close": close,
        }));
    }
    assert_eq!(p11!(module, C_Finalize(ptr::null_mut())), CKR_OK);
    json!({ "pid": std::process::id(), "calls": CALLS.load(Ordering::Relaxed), "interfaces": results })
}

/// A 3.x function list of the module, whose calls it counts.
struct Table3<'m>(*const CK_FUNCTION_LIST_3_0, &'m Module);

impl Table3<'_> {
    fn call(&self, f: impl FnOnce(&CK_FUNCTION_LIST_3_0) -> CK_RV) -> CK_RV {
        // SAFETY: the list came from a successful C_GetInterface for a 3.x interface.
        self.1.tally(f(unsafe { &*self.0 }))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!(
            "usage: p11client MODULE threads N M | fork N K | burst M | paced M MS | noexit M | interfaces PIN"
        );
        std::process::exit(2);
    }
    let number = |index: usize| {
        args.get(index)
            .and_then(|a| a.parse::<usize>().ok())
            .unwrap_or(0)
    };
    let module = Module::load_counted(Path::new(&args[1]), &CALLS).expect("load module");
    let result = match args[2].as_str() {
        "threads" => threads(&module, number(3), number(4)),
        "digests" => contract::digests(&module, number(3), number(4)),
        "fork" => fork(&module, number(3), number(4)),
        "burst" => burst(&module, number(3), 0, true),
        "paced" => burst(&module, number(3), number(4) as u64, true),
        "noexit" => burst(&module, number(3), 0, false),
        "interfaces" => interfaces(&module, args.get(3).map_or("", String::as_str)),
        "interface-list" => interface_list(&module),
        "interface-twins" => contract::interface_twins(&module),
        "nothreads" => no_threads(&module, number(3)),
        "refusable" => stalls::refusable(&module, number(3) as u64),
        "nothreads-held" => stalls::no_threads_held(&module, number(3), number(4)),
        "big-templates" => stalls::big_templates(&module, number(3)),
        "sizes" => contract::sizes(&module, args.get(3).map_or("", String::as_str)),
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(2);
        }
    };
    println!("{result}");
}
