//! The hot path: time the real call, fill a record through the argument roles, queue it.
//!
//! Design budget (see BENCHMARKS.md): for a simple call this costs two monotonic clock reads
//! (vDSO, no syscall), one relaxed atomic increment for `seq`, a thread-local read for the thread
//! id, and one lock-free queue push. No allocation unless the call has templates or parameters,
//! no lock, no I/O; the sender thread does the rest.

use std::panic::{AssertUnwindSafe, catch_unwind};

use p11trace_ffi::*;
use p11trace_record::Func;
use p11trace_record::wire::InterfaceVersion;

use crate::capture::Call;
use crate::client::{self, Client};
use crate::clock::monotonic_ns;
use crate::diag::{Problem, report};
use crate::queued::{Col, Rec};
use crate::real;

thread_local! {
    /// (fork generation, kernel thread id): gettid is a syscall, so it is asked once per thread
    /// and again only in a forked child.
    static THREAD_ID: std::cell::Cell<(u64, i32)> = const { std::cell::Cell::new((u64::MAX, 0)) };
}

#[inline(always)]
fn thread_id(generation: u64) -> i32 {
    THREAD_ID.with(|cell| {
        let (cached_generation, tid) = cell.get();
        if cached_generation == generation {
            return tid;
        }
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        cell.set((generation, tid));
        tid
    })
}

/// The interface version of slot `V`, for the record.
#[inline(always)]
fn interface_of<const V: usize>() -> Option<InterfaceVersion> {
    let version = real::slot_version(V);
    Some(InterfaceVersion {
        major: version.major,
        minor: version.minor,
    })
}

/// Forwards one call through slot `V`'s real table and records it.
#[inline(always)]
pub fn call<const V: usize>(
    func: Func,
    before: impl FnOnce(&mut Call),
    real_call: impl FnOnce() -> CK_RV,
    after: impl FnOnce(&mut Call, CK_RV),
) -> CK_RV {
    record_call(func, interface_of::<V>(), 0, before, real_call, after)
}

/// [`call`] for entry points reached outside any table (`C_GetFunctionList`, `C_GetInterface`)
/// and for the shim's own calls (`flags` = [`record_flags::INTERNAL`]).
#[inline(always)]
pub fn record_call(
    func: Func,
    interface: Option<InterfaceVersion>,
    flags: u8,
    before: impl FnOnce(&mut Call),
    real_call: impl FnOnce() -> CK_RV,
    after: impl FnOnce(&mut Call, CK_RV),
) -> CK_RV {
    // A panic finding or building the client must not reach the host either (building one
    // contains its own; this is the last line).
    let Ok(current) = catch_unwind(client::current) else {
        return unrecorded(real_call);
    };
    let Some(client) = current else {
        return unrecorded(real_call);
    };
    if !client.admit() {
        report(
            Problem::AuditRefused,
            format_args!(
                "audit mode: refusing PKCS#11 calls while they cannot be recorded (recorder unreachable or queue full)"
            ),
        );
        return CKR_GENERAL_ERROR;
    }
    let mut call = Call {
        rec: Rec::new(func.code(), flags, interface),
        pool: client.pool(),
        size_query: false,
        init_flags: 0,
        caller_buffers: Vec::new(),
    };
    // A panic while capturing inputs loses those fields, not the call.
    let _ = catch_unwind(AssertUnwindSafe(|| before(&mut call)));
    let start = monotonic_ns();
    let rv = real_call();
    let end = monotonic_ns();
    call.rec.seq = client.next_seq();
    let finished = catch_unwind(AssertUnwindSafe(|| {
        if client.config.test_panic == Some(func) {
            panic!("injected by P11TRACE_TEST_PANIC");
        }
        after(&mut call, rv);
        finish(client, func, &mut call, rv, start, end);
    }));
    match finished {
        Ok(()) => {
            // Queueing may send from this thread (no sender thread yet): contained too. The
            // record may or may not be queued by then, so it is not counted again.
            if catch_unwind(AssertUnwindSafe(|| client.submit(call.rec))).is_err() {
                report(
                    Problem::Panic,
                    format_args!(
                        "internal error while queueing the record of {}; the call itself went through",
                        func.name()
                    ),
                );
            }
        }
        Err(_) => {
            // The seq is taken: count the call as dropped so `seq` stays gap-free with drops.
            client.drop_admitted();
            report(
                Problem::Panic,
                format_args!(
                    "internal error while recording {}; the call itself went through",
                    func.name()
                ),
            );
            return rv;
        }
    }
    if func == Func::C_Initialize {
        let init_flags = call.init_flags;
        let _ = catch_unwind(AssertUnwindSafe(|| match rv {
            CKR_OK => client.on_initialized(interface, init_flags),
            // A forked child re-initialising a module that kept its state still needs its own
            // sender.
            CKR_CRYPTOKI_ALREADY_INITIALIZED => client.start_sender(init_flags),
            _ => {}
        }));
    }
    if func == Func::C_Finalize {
        let _ = catch_unwind(AssertUnwindSafe(|| client.on_finalized()));
    }
    rv
}

/// A call with no client to record it: run as without the shim, or refused in audit mode.
#[cold]
fn unrecorded(real_call: impl FnOnce() -> CK_RV) -> CK_RV {
    if client::refuses_unrecorded() {
        report(
            Problem::AuditRefused,
            format_args!("audit mode: refusing PKCS#11 calls while they cannot be recorded"),
        );
        return CKR_GENERAL_ERROR;
    }
    real_call()
}

#[inline(always)]
fn finish(client: &Client, func: Func, call: &mut Call, rv: CK_RV, start: i64, end: i64) {
    let rec = &mut call.rec;
    rec.tid = thread_id(client.generation());
    rec.start_ns = start + client.clock_offset();
    rec.dur_ns = end - start;
    rec.rv = rv as u64;
    let session = rec.get(Col::Session);
    if let Some((kind, stage)) = func.spec().op {
        if let Some(op_id) = client
            .ops()
            .track(session, kind, stage, rv, call.size_query)
        {
            rec.set(Col::OpId, op_id);
        }
    } else if matches!(
        func,
        Func::C_CloseSession | Func::C_CloseAllSessions | Func::C_Finalize
    ) && rv == CKR_OK
    {
        client.ops().forget(if func == Func::C_CloseSession {
            session
        } else {
            None
        });
    }
}
