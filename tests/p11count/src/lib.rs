//! # p11count — a test-only counting pass-through module
//!
//! An independent oracle for the shim's recordings where pkcs11-spy cannot serve (OpenSC 0.23's
//! spy loses every call of a 3.2 interface). It forwards every call of the real module
//! (`P11COUNT_MODULE`) and appends `C_Function rv` to `P11COUNT_OUTPUT`, one line per call, in
//! call order. It shares nothing with the shim but the function table.
//!
//! All its tables forward to one real table: the real module's 3.2 interface when it has one (a
//! superset whose 2.40 and 3.0 entries are the same functions), else its 2.x list. It also offers
//! a vendor interface ("Vendor p11count", one `ping` function), so tests can watch the shim pass a
//! vendor interface through untraced.
//!
//! For the `diff` tests it also injects faults a real module cannot be asked for: a slowdown
//! (`P11COUNT_SLOW=FUNC:MICROSECONDS`) and a failure rate (`P11COUNT_FAIL=FUNC:EVERY`).
//!
//! For the shim's hardening tests it can break the PKCS#11 contract on purpose:
//! `P11COUNT_LIE=C_GetAttributeValue,C_FindObjects` (either or both) makes it lie about the sizes
//! it wrote, after the real call. `C_GetAttributeValue` reports every value it filled as 100 bytes
//! longer than the caller's buffer (`ulValueLen` = the caller's `ulValueLen` + 100; size queries
//! and `CK_UNAVAILABLE_INFORMATION` are left alone); `C_FindObjects` reports 100 handles more than
//! `ulMaxObjectCount`. The real module wrote within the caller's buffers: only the lengths lie, so
//! whoever trusts them reads past the caller's memory (see `lie.rs`).
//!
//! Its C definitions (the 3.2 function list among them) come from `p11trace-ffi`, like the shim's.

#![allow(non_snake_case, clippy::missing_safety_doc)]

use std::io::Write;
use std::sync::{Mutex, OnceLock};

use p11trace_ffi::*;

mod lie;

struct Real {
    list: *const CK_FUNCTION_LIST_3_2,
    get_function_list: GetFunctionListFn,
    get_interface: Option<GetInterfaceFn>,
}

// SAFETY: the real module's function list is immutable.
unsafe impl Send for Real {}
// SAFETY: as above.
unsafe impl Sync for Real {}

static REAL: OnceLock<Real> = OnceLock::new();
static LOG: OnceLock<Mutex<std::fs::File>> = OnceLock::new();

fn log(function: &str, rv: CK_RV) {
    let log = LOG.get_or_init(|| {
        let path = std::env::var("P11COUNT_OUTPUT").expect("P11COUNT_OUTPUT");
        Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("open P11COUNT_OUTPUT"),
        )
    });
    let mut file = log.lock().unwrap_or_else(|p| p.into_inner());
    let _ = writeln!(file, "{function} {rv}");
}

/// Faults to inject, for the tests of `diff` (a slowdown and a failure rate a real module cannot
/// be asked for): `P11COUNT_SLOW=C_Sign:2000` spins 2,000 µs before every real `C_Sign`;
/// `P11COUNT_FAIL=C_Sign:20` turns every 20th successful `C_Sign` into `CKR_DEVICE_ERROR` (the
/// real call was made, so the token's operation state stays consistent).
struct Faults {
    slow: Option<(String, std::time::Duration)>,
    fail: Option<(String, u64)>,
    successes: std::sync::atomic::AtomicU64,
}

fn fault(variable: &str) -> Option<(String, u64)> {
    let value = std::env::var(variable).ok()?;
    let (function, number) = value.split_once(':')?;
    Some((function.to_owned(), number.parse().ok().filter(|n| *n > 0)?))
}

fn faults() -> &'static Faults {
    static FAULTS: OnceLock<Faults> = OnceLock::new();
    FAULTS.get_or_init(|| Faults {
        slow: fault("P11COUNT_SLOW")
            .map(|(function, us)| (function, std::time::Duration::from_micros(us))),
        fail: fault("P11COUNT_FAIL"),
        successes: std::sync::atomic::AtomicU64::new(0),
    })
}

/// The injected slowdown, before the real call: the delay stands where a slower token would
/// spend it, and the real call that follows leaves the caches as it always does, so the next
/// call is not slowed by the pause (a pause right before returning leaves the caller's next call
/// cold: measured `C_DigestInit` 4 → 10 µs after 1 ms injected at the end of `C_Digest`). A busy
/// wait, not a sleep: a descheduled thread comes back colder still.
fn slow_down(function: &str) {
    if let Some((name, pause)) = &faults().slow
        && name == function
    {
        let until = std::time::Instant::now() + *pause;
        while std::time::Instant::now() < until {
            std::hint::spin_loop();
        }
    }
}

/// The injected failure, after the real call (its operation state stays consistent).
fn fail(function: &str, rv: CK_RV) -> CK_RV {
    let faults = faults();
    if let Some((name, every)) = &faults.fail
        && name == function
        && rv == CKR_OK
    {
        let n = faults
            .successes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        if n.is_multiple_of(*every) {
            return CKR_DEVICE_ERROR;
        }
    }
    rv
}

fn real() -> &'static Real {
    REAL.get_or_init(|| {
        let path = std::env::var("P11COUNT_MODULE").expect("P11COUNT_MODULE");
        // SAFETY: loading the module under test, never unloaded.
        let library = unsafe { libloading::Library::new(&path) }.expect("load P11COUNT_MODULE");
        // SAFETY: PKCS#11 prototypes.
        let get_function_list = unsafe {
            *library
                .get::<GetFunctionListFn>(b"C_GetFunctionList\0")
                .expect("C_GetFunctionList")
        };
        // SAFETY: as above.
        let get_interface = unsafe { library.get::<GetInterfaceFn>(b"C_GetInterface\0") }
            .ok()
            .map(|s| *s);
        std::mem::forget(library);
        let mut list: *const CK_FUNCTION_LIST_3_2 = std::ptr::null();
        if let Some(get_interface) = get_interface {
            let mut interface: CK_INTERFACE_PTR = std::ptr::null_mut();
            let mut version = CK_VERSION { major: 3, minor: 2 };
            // SAFETY: valid arguments; the result is not logged (the oracle's own setup call).
            if unsafe {
                get_interface(
                    PKCS11_INTERFACE_NAME.as_ptr().cast_mut().cast(),
                    &mut version,
                    &mut interface,
                    0,
                )
            } == CKR_OK
            {
                // SAFETY: a 3.2 interface carries a 3.2 function list.
                list = unsafe { (*interface).pFunctionList }.cast();
            }
        }
        if list.is_null() {
            let mut two: CK_FUNCTION_LIST_PTR = std::ptr::null_mut();
            // SAFETY: out-pointer to our local.
            unsafe { get_function_list(&mut two) };
            list = two.cast();
        }
        Real {
            list,
            get_function_list,
            get_interface,
        }
    })
}

macro_rules! oracle {
    ($( $group:ident { $(
        $name:ident ( $( $arg:ident : $ty:ty => $role:ident $( ( $($extra:ident),* ) )? ),* $(,)? ) [ $($op:tt)* ] ;
    )* } )*) => {
        mod forward {
            use super::*;
            $( $(
                pub(super) unsafe extern "C" fn $name($($arg: $ty),*) -> CK_RV {
                    slow_down(stringify!($name));
                    // SAFETY: forwarding the caller's arguments to the same entry of the real table.
                    let rv = match unsafe { (*real().list).$name } {
                        // SAFETY: as above.
                        Some(f) => unsafe { f($($arg),*) },
                        None => CKR_FUNCTION_NOT_SUPPORTED,
                    };
                    let rv = fail(stringify!($name), rv);
                    log(stringify!($name), rv);
                    rv
                }
            )* )*
        }

        /// A 3.2-layout table (also handed out as the 2.40 and 3.0 lists: they are its prefixes).
        fn table(major: u8, minor: u8) -> CK_FUNCTION_LIST_3_2 {
            CK_FUNCTION_LIST_3_2 { version: CK_VERSION { major, minor }, $( $( $name: Some(forward::$name), )* )* }
        }
    };
}

p11trace_record::with_pkcs11_functions!(oracle);

/// A vendor interface, so tests can see the shim pass other interfaces through untraced.
#[repr(C)]
pub struct VendorList {
    pub version: CK_VERSION,
    pub ping: unsafe extern "C" fn(CK_ULONG) -> CK_RV,
}

/// The vendor interface's only function: answers its argument (as CK_RV) and logs it.
unsafe extern "C" fn vendor_ping(value: CK_ULONG) -> CK_RV {
    log("Vendor_Ping", value);
    value
}

pub const VENDOR_NAME: &std::ffi::CStr = c"Vendor p11count";

struct Tables {
    v240: CK_FUNCTION_LIST_3_2,
    v30: CK_FUNCTION_LIST_3_2,
    v32: CK_FUNCTION_LIST_3_2,
    v35: CK_FUNCTION_LIST_3_2,
    v30_fork_safe: CK_FUNCTION_LIST_3_2,
    vendor: VendorList,
    /// v32, v30, vendor.
    interfaces: [CK_INTERFACE; 3],
    /// `P11COUNT_INTERFACES=more`: v35, v32, v30, vendor, v30_fork_safe.
    more: [CK_INTERFACE; 5],
}

/// `CKF_INTERFACE_FORK_SAFE` (PKCS#11 3.0).
const CKF_INTERFACE_FORK_SAFE: CK_FLAGS = 1;

/// `P11COUNT_INTERFACES=more`: the two extra "PKCS 11" interfaces are offered.
fn more_interfaces() -> bool {
    std::env::var("P11COUNT_INTERFACES").is_ok_and(|v| v == "more")
}

/// The interfaces offered: three, or five with `P11COUNT_INTERFACES=more`.
fn offered() -> &'static [CK_INTERFACE] {
    if more_interfaces() {
        &tables().more
    } else {
        &tables().interfaces
    }
}

// SAFETY: immutable after construction; the interface names point to static strings.
unsafe impl Send for Tables {}
// SAFETY: as above.
unsafe impl Sync for Tables {}

static TABLES: OnceLock<Box<Tables>> = OnceLock::new();

fn tables() -> &'static Tables {
    TABLES.get_or_init(|| {
        let none = CK_INTERFACE {
            pInterfaceName: std::ptr::null_mut(),
            pFunctionList: std::ptr::null_mut(),
            flags: 0,
        };
        let mut tables = Box::new(Tables {
            v240: lie::install(table(2, 40)),
            v30: lie::install(table(3, 0)),
            v32: lie::install(table(3, 2)),
            v35: lie::install(table(3, 5)),
            v30_fork_safe: lie::install(table(3, 0)),
            vendor: VendorList {
                version: CK_VERSION { major: 1, minor: 0 },
                ping: vendor_ping,
            },
            interfaces: [none; 3],
            more: [none; 5],
        });
        let name = PKCS11_INTERFACE_NAME.as_ptr().cast_mut().cast();
        let v32 = (&raw mut tables.v32).cast();
        let v30 = (&raw mut tables.v30).cast();
        let vendor = (&raw mut tables.vendor).cast();
        let v35 = (&raw mut tables.v35).cast();
        let v30_fork_safe = (&raw mut tables.v30_fork_safe).cast();
        let interface = |pFunctionList, flags| CK_INTERFACE {
            pInterfaceName: name,
            pFunctionList,
            flags,
        };
        let vendor = CK_INTERFACE {
            pInterfaceName: VENDOR_NAME.as_ptr().cast_mut().cast(),
            pFunctionList: vendor,
            flags: 0,
        };
        tables.interfaces = [interface(v32, 0), interface(v30, 0), vendor];
        tables.more = [
            interface(v35, 0),
            interface(v32, 0),
            interface(v30, 0),
            vendor,
            interface(v30_fork_safe, CKF_INTERFACE_FORK_SAFE),
        ];
        tables
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetFunctionList(list: CK_FUNCTION_LIST_PTR_PTR) -> CK_RV {
    let mut ignored: CK_FUNCTION_LIST_PTR = std::ptr::null_mut();
    // SAFETY: the real entry point with our local out-pointer.
    let rv = unsafe { (real().get_function_list)(&mut ignored) };
    log("C_GetFunctionList", rv);
    if rv == CKR_OK && !list.is_null() {
        // SAFETY: caller's out-pointer.
        unsafe { *list = std::ptr::from_ref(&tables().v240).cast_mut().cast() };
    }
    rv
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetInterface(
    name: CK_UTF8CHAR_PTR,
    version: CK_VERSION_PTR,
    interface: CK_INTERFACE_PTR_PTR,
    flags: CK_FLAGS,
) -> CK_RV {
    // SAFETY: a non-null name is a NUL-terminated string.
    if !name.is_null() && unsafe { std::ffi::CStr::from_ptr(name.cast()) } == VENDOR_NAME {
        log("C_GetInterface", CKR_OK);
        if !interface.is_null() {
            // SAFETY: caller's out-pointer.
            unsafe { *interface = std::ptr::from_ref(&tables().interfaces[2]).cast_mut() };
        }
        return CKR_OK;
    }
    if more_interfaces() {
        // SAFETY: the caller's arguments: a non-null version points to a CK_VERSION.
        return unsafe { own_interface(version, interface, flags) };
    }
    let Some(get_interface) = real().get_interface else {
        log("C_GetInterface", CKR_FUNCTION_NOT_SUPPORTED);
        return CKR_FUNCTION_NOT_SUPPORTED;
    };
    let mut ignored: CK_INTERFACE_PTR = std::ptr::null_mut();
    // SAFETY: the caller's arguments, with our local out-pointer.
    let rv = unsafe { get_interface(name, version, &mut ignored, flags) };
    log("C_GetInterface", rv);
    if rv == CKR_OK && !interface.is_null() && !ignored.is_null() {
        // SAFETY: a successful call returned an interface whose list starts with its version.
        let wanted = unsafe { *(*ignored).pFunctionList.cast::<CK_VERSION>() };
        let ours = if (wanted.major, wanted.minor) >= (3, 2) {
            &tables().interfaces[0]
        } else {
            &tables().interfaces[1]
        };
        // SAFETY: caller's out-pointer.
        unsafe { *interface = std::ptr::from_ref(ours).cast_mut() };
    }
    rv
}

/// `C_GetInterface("PKCS 11", version, flags)` answered from [`offered`].
///
/// # Safety
/// `version` null or a valid CK_VERSION; `interface` null or a valid out-pointer.
unsafe fn own_interface(
    version: CK_VERSION_PTR,
    interface: CK_INTERFACE_PTR_PTR,
    flags: CK_FLAGS,
) -> CK_RV {
    // SAFETY: a non-null version points to the caller's CK_VERSION.
    let wanted = unsafe { version.as_ref() }.map(|v| (v.major, v.minor));
    let found = offered().iter().find(|candidate| {
        // SAFETY: our interfaces' names are static C strings, their lists start with a version.
        let (name, listed) = unsafe {
            (
                std::ffi::CStr::from_ptr(candidate.pInterfaceName.cast()),
                *candidate.pFunctionList.cast::<CK_VERSION>(),
            )
        };
        name == PKCS11_INTERFACE_NAME
            && wanted.is_none_or(|w| w == (listed.major, listed.minor))
            && candidate.flags & flags == flags
    });
    let rv = match (found, interface.is_null()) {
        (_, true) => CKR_ARGUMENTS_BAD,
        (None, false) => CKR_ARGUMENTS_BAD,
        (Some(found), false) => {
            // SAFETY: the caller's out-pointer.
            unsafe { *interface = std::ptr::from_ref(found).cast_mut() };
            CKR_OK
        }
    };
    log("C_GetInterface", rv);
    rv
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetInterfaceList(list: CK_INTERFACE_PTR, count: CK_ULONG_PTR) -> CK_RV {
    if count.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    let all = offered();
    // SAFETY: count is non-null; list, when non-null, holds *count entries.
    let rv = unsafe {
        if list.is_null() {
            *count = all.len() as CK_ULONG;
            CKR_OK
        } else if (*count as usize) < all.len() {
            *count = all.len() as CK_ULONG;
            CKR_BUFFER_TOO_SMALL
        } else {
            for (index, interface) in all.iter().enumerate() {
                *list.add(index) = *interface;
            }
            *count = all.len() as CK_ULONG;
            CKR_OK
        }
    };
    log("C_GetInterfaceList", rv);
    rv
}
