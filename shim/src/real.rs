//! The real module: loaded once with libloading and never unloaded, plus the real function tables
//! the application reached through the shim, one per *slot*.
//!
//! A slot is a function-table layout and version, its *kind*: 0 = 2.x (`C_GetFunctionList` and
//! "PKCS 11" 2.x interfaces), 1 = 3.0, 2 = 3.1 (3.0 layout), 3 = 3.2 and later (3.2 layout). Each
//! kind has [`TWINS`] slots, so a module offering two different tables of one version (a
//! fork-safe interface beside a plain one, with other flags) gets a traced twin of each: slot
//! `kind + KINDS * n` holds the n-th distinct real table of that kind seen. Each traced table in
//! `tables.rs` forwards to the real table of its slot; a further distinct table of a kind whose
//! slots are all taken shares the first (the one case that still collapses).
//!
//! Below `entry`, `tables` and `trace`; it uses only the leaves (`config`, `diag`).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicPtr, AtomicU16, Ordering};

use p11trace_ffi::*;

use crate::config::{self, ModuleSource};
use crate::diag::{Problem, report};

/// Number of slot kinds (layout and version).
pub const KINDS: usize = 4;
/// Slots per kind: distinct real tables of one version traced apart.
pub const TWINS: usize = 2;
/// Number of table slots.
pub const SLOTS: usize = KINDS * TWINS;

/// The real module's exported entry points.
pub struct RealModule {
    pub path: String,
    pub get_function_list: GetFunctionListFn,
    pub get_interface_list: Option<GetInterfaceListFn>,
    pub get_interface: Option<GetInterfaceFn>,
}

static MODULE: OnceLock<Option<RealModule>> = OnceLock::new();

/// The real module, loading it on first use. `None` (after one stderr line) when it cannot be
/// loaded; callers then answer `CKR_GENERAL_ERROR`.
///
/// `shim_entry` is the shim's own exported `C_GetFunctionList` (handed down by `entry`): a
/// configured module that resolves to it is the shim itself, and is refused.
pub fn module(shim_entry: GetFunctionListFn) -> Option<&'static RealModule> {
    MODULE
        .get_or_init(|| {
            let config = config::get();
            let Some(source) = &config.module else {
                report(
                    Problem::ModuleLoad,
                    format_args!(
                        "no real PKCS#11 module: set P11TRACE_MODULE (or PKCS11SPY) to its path; every call fails with CKR_GENERAL_ERROR"
                    ),
                );
                return None;
            };
            match load(source, shim_entry) {
                Ok(module) => Some(module),
                Err(message) => {
                    report(Problem::ModuleLoad, format_args!("{message}"));
                    None
                }
            }
        })
        .as_ref()
}

/// A libloading error with its cause (libloading's own text is only "dlopen failed").
fn describe(error: &libloading::Error) -> String {
    match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}

fn load(source: &ModuleSource, shim_entry: GetFunctionListFn) -> Result<RealModule, String> {
    let shown = config::display(&source.path);
    let flags = libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL;
    // SAFETY: loading a PKCS#11 module runs its initialisers; that is exactly what the host asked
    // for by loading us in its place.
    let library = unsafe { libloading::os::unix::Library::open(Some(&source.path), flags) }
        .map_err(|e| {
            format!(
                "cannot load the real module {}={shown}: {}",
                source.variable,
                describe(&e)
            )
        })?;
    // SAFETY: the symbol types are the PKCS#11 prototypes of these entry points.
    let get_function_list = unsafe { library.get::<GetFunctionListFn>(b"C_GetFunctionList\0") }
        .map(|symbol| *symbol)
        .map_err(|e| {
            format!(
                "{}={shown} is not a PKCS#11 module: {}",
                source.variable,
                describe(&e)
            )
        })?;
    if get_function_list as *const () == shim_entry as *const () {
        return Err(format!(
            "{}={shown} is the p11trace shim itself, not the real module",
            source.variable
        ));
    }
    // SAFETY: as above; these 3.0 entry points are optional.
    let get_interface_list = unsafe { library.get::<GetInterfaceListFn>(b"C_GetInterfaceList\0") }
        .ok()
        .map(|symbol| *symbol);
    // SAFETY: as above.
    let get_interface = unsafe { library.get::<GetInterfaceFn>(b"C_GetInterface\0") }
        .ok()
        .map(|symbol| *symbol);
    // Never unload: wrappers and background threads may run module code at any time.
    std::mem::forget(library);
    Ok(RealModule {
        path: shown,
        get_function_list,
        get_interface_list,
        get_interface,
    })
}

static REAL: [AtomicPtr<CK_FUNCTION_LIST_3_2>; SLOTS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; SLOTS];
static VERSIONS: [AtomicU16; SLOTS] = [const { AtomicU16::new(0) }; SLOTS];

/// The slot kind of a real "PKCS 11" table of this version (its first slot).
pub fn slot_for(version: CK_VERSION) -> usize {
    match (version.major, version.minor) {
        (0..=2, _) => 0,
        (3, 0) => 1,
        (3, 1) => 2,
        _ => 3,
    }
}

/// The newest version the traced table of `slot` may claim: its own layout's. A real table of a
/// later version (3.5) is traced through the 3.2 layout, so its twin says 3.2; a caller trusting
/// 3.5 would read entries past the traced table's end.
pub fn layout_version(slot: usize) -> CK_VERSION {
    let (major, minor) = match slot % KINDS {
        0 => (2, 40),
        1 => (3, 0),
        2 => (3, 1),
        _ => (3, 2),
    };
    CK_VERSION { major, minor }
}

/// Remembers `list` as a real table of `kind` (see [`slot_for`]): the slot already holding it,
/// else the first free slot of the kind, else (all taken by other tables) the kind's first.
/// Returns the slot.
///
/// # Safety
/// `list` must point to a live function list whose layout is at least the kind's layout.
pub unsafe fn install(
    kind: usize,
    list: *const CK_FUNCTION_LIST_3_2,
    version: CK_VERSION,
) -> usize {
    let packed = u16::from(version.major) << 8 | u16::from(version.minor);
    for twin in 0..TWINS {
        let slot = kind % KINDS + KINDS * twin;
        match REAL[slot].compare_exchange(
            std::ptr::null_mut(),
            list.cast_mut(),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                VERSIONS[slot].store(packed, Ordering::Release);
                return slot;
            }
            Err(held) if std::ptr::eq(held, list) => {
                // Installed by another thread, which stores the version right after: wait for it
                // (a real table's version is never 0.0).
                for _ in 0..10_000 {
                    if VERSIONS[slot].load(Ordering::Acquire) != 0 {
                        break;
                    }
                    std::thread::yield_now();
                }
                return slot;
            }
            Err(_) => {}
        }
    }
    kind % KINDS
}

/// The first slot holding a real table of exactly `version` (the kind's first if none does).
pub fn slot_of_version(version: CK_VERSION) -> usize {
    let kind = slot_for(version);
    (0..TWINS)
        .map(|twin| kind + KINDS * twin)
        .find(|&slot| {
            !list_at(slot).is_null() && {
                let held = slot_version(slot);
                (held.major, held.minor) == (version.major, version.minor)
            }
        })
        .unwrap_or(kind)
}

/// The version of the real table installed in `slot`.
pub fn slot_version(slot: usize) -> CK_VERSION {
    let packed = VERSIONS[slot].load(Ordering::Acquire);
    CK_VERSION {
        major: (packed >> 8) as u8,
        minor: packed as u8,
    }
}

/// The real table behind slot `V`, viewed through the 3.2 layout. Only fields that exist in the
/// slot's own layout may be read: the wrappers of slot `V` are exactly those functions.
#[inline(always)]
pub fn list<const V: usize>() -> *const CK_FUNCTION_LIST_3_2 {
    REAL[V].load(Ordering::Acquire)
}

/// [`list`] for a slot known only at run time.
pub fn list_at(slot: usize) -> *const CK_FUNCTION_LIST_3_2 {
    REAL[slot].load(Ordering::Acquire)
}
