//! The exported entry points (`C_GetFunctionList`, `C_GetInterfaceList`, `C_GetInterface`) and
//! their in-table twins: they forward to the real module and hand back traced tables.
//!
//! Interfaces are mirrored honestly: the caller sees exactly the interfaces and versions the real
//! module offers, each "PKCS 11" table replaced by its traced twin. Interfaces with other names
//! (vendor interfaces) pass through untraced, and the record of the call that returned one says so.
//! A real module without the 3.0 entry points is answered like pkcs11-spy does: one "PKCS 11"
//! interface, the 2.x table.
//!
//! The top of the shim: it hands the layers below what they must not import, namely its own
//! in-table entry points to `tables` ([`tables::EntryPoints`]), its `C_GetFunctionList` to `real`
//! (to refuse loading the shim as its own real module), and the internal `C_GetInfo` and the real
//! module's path to `client` ([`client::Upcalls`]).

#![allow(non_snake_case)]

use std::ffi::CStr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use p11trace_ffi::*;
use p11trace_record::Func;
use p11trace_record::attr::AttrValue;
use p11trace_record::attr::InfoField;
use p11trace_record::policy::provider_string;
use p11trace_record::wire::{InterfaceVersion, record_flags};

use crate::capture::{Call, field, fixed_text};
use crate::real::{self, RealModule};
use crate::{client, roles, tables, trace};

/// The table entries of the three functions that hand out tables: the exported functions'
/// bodies, without their panic guard.
static ENTRY_POINTS: tables::EntryPoints = tables::EntryPoints {
    get_function_list: Some(in_table::C_GetFunctionList),
    get_interface_list: Some(in_table::C_GetInterfaceList),
    get_interface: Some(in_table::C_GetInterface),
};

mod in_table {
    use super::*;

    pub(super) unsafe extern "C" fn C_GetFunctionList(
        ppFunctionList: CK_FUNCTION_LIST_PTR_PTR,
    ) -> CK_RV {
        // SAFETY: the caller's arguments, passed on under the same PKCS#11 contract.
        unsafe { get_function_list(ppFunctionList) }
    }

    pub(super) unsafe extern "C" fn C_GetInterfaceList(
        pInterfacesList: CK_INTERFACE_PTR,
        pulCount: CK_ULONG_PTR,
    ) -> CK_RV {
        // SAFETY: as above.
        unsafe { get_interface_list(pInterfacesList, pulCount) }
    }

    pub(super) unsafe extern "C" fn C_GetInterface(
        pInterfaceName: CK_UTF8CHAR_PTR,
        pVersion: CK_VERSION_PTR,
        ppInterface: CK_INTERFACE_PTR_PTR,
        flags: CK_FLAGS,
    ) -> CK_RV {
        // SAFETY: as above.
        unsafe { get_interface(pInterfaceName, pVersion, ppInterface, flags) }
    }
}

/// What the client needs from up here.
static UPCALLS: client::Upcalls = client::Upcalls {
    provider: internal_get_info,
    module_path,
};

/// The real module (loaded on first use, never this shim itself); once it is loaded the client
/// gets its [`client::Upcalls`].
fn real_module() -> Option<&'static RealModule> {
    let module = real::module(C_GetFunctionList)?;
    client::register(&UPCALLS);
    Some(module)
}

fn module_path() -> String {
    real_module().map(|m| m.path.clone()).unwrap_or_default()
}

/// Runs an entry point; a panic before the real call answers `CKR_GENERAL_ERROR`.
fn guarded(entry: impl FnOnce() -> CK_RV) -> CK_RV {
    catch_unwind(AssertUnwindSafe(entry)).unwrap_or(CKR_GENERAL_ERROR)
}

/// The shim's version, NUL-terminated (`CARGO_PKG_VERSION`).
const SHIM_VERSION: &CStr =
    match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(version) => version,
        Err(_) => panic!("the package version holds a NUL byte"),
    };

/// Says "this is p11trace's shim, version X" without initialising anything: no configuration is
/// read, no module loaded, no thread started (`p11trace-recorder doctor` looks it up after a
/// `dlopen`). Returns a static NUL-terminated string, never null, valid for the library's life.
#[unsafe(no_mangle)]
pub extern "C" fn p11trace_shim_version() -> *const std::ffi::c_char {
    SHIM_VERSION.as_ptr()
}

/// # Safety
/// PKCS#11 contract of `C_GetFunctionList`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetFunctionList(ppFunctionList: CK_FUNCTION_LIST_PTR_PTR) -> CK_RV {
    // SAFETY: the caller's arguments, passed on.
    guarded(|| unsafe { get_function_list(ppFunctionList) })
}

/// # Safety
/// PKCS#11 contract of `C_GetInterfaceList`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetInterfaceList(
    pInterfacesList: CK_INTERFACE_PTR,
    pulCount: CK_ULONG_PTR,
) -> CK_RV {
    // SAFETY: the caller's arguments, passed on.
    guarded(|| unsafe { get_interface_list(pInterfacesList, pulCount) })
}

/// # Safety
/// PKCS#11 contract of `C_GetInterface`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetInterface(
    pInterfaceName: CK_UTF8CHAR_PTR,
    pVersion: CK_VERSION_PTR,
    ppInterface: CK_INTERFACE_PTR_PTR,
    flags: CK_FLAGS,
) -> CK_RV {
    // SAFETY: the caller's arguments, passed on.
    guarded(|| unsafe { get_interface(pInterfaceName, pVersion, ppInterface, flags) })
}

/// Installs a real "PKCS 11" function list and returns its traced twin.
///
/// # Safety
/// `list` must be a real module's function list (its first field is its version).
unsafe fn traced_twin(list: *mut std::ffi::c_void) -> (usize, *mut std::ffi::c_void) {
    // SAFETY: every PKCS#11 function list starts with its CK_VERSION.
    let version = unsafe { *list.cast::<CK_VERSION>() };
    // SAFETY: the layout of the kind is the layout of a list of this version.
    let slot = unsafe { real::install(real::slot_for(version), list.cast(), version) };
    (slot, tables::traced_table(slot, &ENTRY_POINTS))
}

/// `C_GetFunctionList`, exported or through a table: the real 2.x list, traced.
///
/// # Safety
/// PKCS#11 contract of `C_GetFunctionList`.
pub unsafe fn get_function_list(ppFunctionList: CK_FUNCTION_LIST_PTR_PTR) -> CK_RV {
    // SAFETY: forwarded contract.
    unsafe { function_list(ppFunctionList, 0) }
}

unsafe fn function_list(ppFunctionList: CK_FUNCTION_LIST_PTR_PTR, flags: u8) -> CK_RV {
    let Some(module) = real_module() else {
        return CKR_GENERAL_ERROR;
    };
    let mut real_list: CK_FUNCTION_LIST_PTR = std::ptr::null_mut();
    let target = if ppFunctionList.is_null() {
        std::ptr::null_mut()
    } else {
        &raw mut real_list
    };
    // SAFETY: calling the real entry point with a pointer to our local (or the caller's null).
    let rv = trace::record_call(
        Func::C_GetFunctionList,
        None,
        flags,
        |_| {},
        || unsafe { (module.get_function_list)(target) },
        |_, _| {},
    );
    if rv == CKR_OK && !real_list.is_null() {
        // SAFETY: a successful C_GetFunctionList returned a 2.x list; ppFunctionList is non-null.
        unsafe {
            let version = (*real_list).version;
            let slot = real::install(0, real_list.cast(), version);
            *ppFunctionList = tables::traced_table(slot, &ENTRY_POINTS).cast();
        }
    }
    rv
}

/// Our CK_INTERFACE for each slot and fork-safety (`CKF_INTERFACE_FORK_SAFE`, the one flag
/// PKCS#11 defines): stable addresses, the real interface's flags. One real table offered with
/// and without the flag is two interfaces, and stays two.
struct Interface(CK_INTERFACE);
// SAFETY: the name points to a static string and the list to a static table; both immutable.
unsafe impl Sync for Interface {}
// SAFETY: as above.
unsafe impl Send for Interface {}

static INTERFACES: [[OnceLock<Interface>; 2]; real::SLOTS] =
    [const { [const { OnceLock::new() }; 2] }; real::SLOTS];

/// `CKF_INTERFACE_FORK_SAFE` (PKCS#11 3.0).
const CKF_INTERFACE_FORK_SAFE: CK_FLAGS = 1;

fn traced_interface(
    slot: usize,
    table: *mut std::ffi::c_void,
    flags: CK_FLAGS,
) -> CK_INTERFACE_PTR {
    let fork_safe = usize::from(flags & CKF_INTERFACE_FORK_SAFE != 0);
    let interface = INTERFACES[slot][fork_safe].get_or_init(|| {
        Interface(CK_INTERFACE {
            pInterfaceName: PKCS11_INTERFACE_NAME.as_ptr().cast_mut().cast(),
            pFunctionList: table,
            flags,
        })
    });
    std::ptr::from_ref(&interface.0).cast_mut()
}

/// Wraps one real interface in place: "PKCS 11" gets its traced twin, anything else is noted.
///
/// # Safety
/// `interface` must be a valid interface returned by the real module.
unsafe fn mirror(call: &mut Call, interface: &mut CK_INTERFACE) {
    // SAFETY: interface names are NUL-terminated strings.
    let name = unsafe { CStr::from_ptr(interface.pInterfaceName.cast()) };
    if name == PKCS11_INTERFACE_NAME && !interface.pFunctionList.is_null() {
        // SAFETY: a "PKCS 11" interface carries a function list.
        let (_, table) = unsafe { traced_twin(interface.pFunctionList) };
        interface.pFunctionList = table;
    } else {
        let text = String::from_utf8_lossy(name.to_bytes()).into_owned();
        call.push_attrs([field(InfoField::UntracedInterface, AttrValue::Text(text))]);
    }
}

/// `C_GetInterfaceList`, exported or through a table.
///
/// # Safety
/// PKCS#11 contract of `C_GetInterfaceList`.
pub unsafe fn get_interface_list(
    pInterfacesList: CK_INTERFACE_PTR,
    pulCount: CK_ULONG_PTR,
) -> CK_RV {
    let Some(module) = real_module() else {
        return CKR_GENERAL_ERROR;
    };
    let Some(real_list) = module.get_interface_list else {
        // SAFETY: forwarded contract.
        return unsafe { emulated_interface_list(pInterfacesList, pulCount) };
    };
    // The caller's room, before the module overwrites the count: never more entries than that
    // are touched, whatever count the module reports.
    let room = if pulCount.is_null() {
        0
    } else {
        // SAFETY: a non-null pulCount points to the caller's count.
        usize::try_from(unsafe { *pulCount }).unwrap_or(usize::MAX)
    };
    trace::record_call(
        Func::C_GetInterfaceList,
        None,
        0,
        |_| {},
        // SAFETY: the caller's arguments, passed on.
        || unsafe { real_list(pInterfacesList, pulCount) },
        |call, rv| {
            // SAFETY: the roles' contract; on success the module filled *pulCount interfaces.
            unsafe { roles::count_out::after(call, rv, pulCount) };
            if rv == CKR_OK && !pInterfacesList.is_null() && !pulCount.is_null() {
                // SAFETY: pulCount is non-null and the module wrote it.
                let written = usize::try_from(unsafe { *pulCount }).unwrap_or(usize::MAX);
                // SAFETY: the caller's list holds `room` entries; the module filled the first
                // `written`.
                let interfaces =
                    unsafe { std::slice::from_raw_parts_mut(pInterfacesList, written.min(room)) };
                for interface in interfaces {
                    // SAFETY: a filled interface entry.
                    unsafe { mirror(call, interface) };
                }
            }
        },
    )
}

/// For a 2.x module: one "PKCS 11" interface holding the traced 2.x table.
unsafe fn emulated_interface_list(
    pInterfacesList: CK_INTERFACE_PTR,
    pulCount: CK_ULONG_PTR,
) -> CK_RV {
    if pulCount.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    // SAFETY: pulCount is non-null; pInterfacesList, when non-null, holds *pulCount entries.
    unsafe {
        if pInterfacesList.is_null() {
            *pulCount = 1;
            return CKR_OK;
        }
        if *pulCount < 1 {
            *pulCount = 1;
            return CKR_BUFFER_TOO_SMALL;
        }
        let Some(interface) = emulated_interface() else {
            return CKR_GENERAL_ERROR;
        };
        *pInterfacesList = *interface;
        *pulCount = 1;
    }
    CKR_OK
}

/// The 2.x interface of a module without `C_GetInterface`: its table comes from an internal
/// `C_GetFunctionList` (recorded with `internal = true`).
fn emulated_interface() -> Option<CK_INTERFACE_PTR> {
    let mut table: CK_FUNCTION_LIST_PTR = std::ptr::null_mut();
    // SAFETY: a valid out-pointer to our local.
    if unsafe { function_list(&raw mut table, record_flags::INTERNAL) } != CKR_OK {
        return None;
    }
    Some(traced_interface(
        0,
        tables::traced_table(0, &ENTRY_POINTS),
        0,
    ))
}

/// `C_GetInterface`, exported or through a table.
///
/// # Safety
/// PKCS#11 contract of `C_GetInterface`.
pub unsafe fn get_interface(
    pInterfaceName: CK_UTF8CHAR_PTR,
    pVersion: CK_VERSION_PTR,
    ppInterface: CK_INTERFACE_PTR_PTR,
    flags: CK_FLAGS,
) -> CK_RV {
    let Some(module) = real_module() else {
        return CKR_GENERAL_ERROR;
    };
    let before = |call: &mut Call| {
        // SAFETY: the caller's arguments.
        unsafe {
            roles::interface_name::before(call, pInterfaceName);
            roles::flags::before(call, flags);
        }
    };
    let Some(real_get) = module.get_interface else {
        return trace::record_call(
            Func::C_GetInterface,
            None,
            0,
            before,
            // SAFETY: forwarded contract.
            || unsafe { emulated_get_interface(pInterfaceName, pVersion, ppInterface) },
            |_, _| {},
        );
    };
    let mut real_interface: CK_INTERFACE_PTR = std::ptr::null_mut();
    let target = if ppInterface.is_null() {
        std::ptr::null_mut()
    } else {
        &raw mut real_interface
    };
    trace::record_call(
        Func::C_GetInterface,
        None,
        0,
        before,
        // SAFETY: the caller's arguments, with our local as the out-pointer.
        || unsafe { real_get(pInterfaceName, pVersion, target, flags) },
        |call, rv| {
            if rv != CKR_OK || real_interface.is_null() {
                return;
            }
            // SAFETY: a successful C_GetInterface returned a valid interface; ppInterface is
            // non-null (target was).
            unsafe {
                let interface = *real_interface;
                let name = CStr::from_ptr(interface.pInterfaceName.cast());
                if name == PKCS11_INTERFACE_NAME && !interface.pFunctionList.is_null() {
                    let (slot, table) = traced_twin(interface.pFunctionList);
                    let version = real::slot_version(slot);
                    call.push_attrs([field(
                        InfoField::InterfaceVersion,
                        AttrValue::Version(version.major, version.minor),
                    )]);
                    *ppInterface = traced_interface(slot, table, interface.flags);
                } else {
                    let mut copy = interface;
                    mirror(call, &mut copy);
                    *ppInterface = real_interface;
                }
            }
        },
    )
}

unsafe fn emulated_get_interface(
    pInterfaceName: CK_UTF8CHAR_PTR,
    pVersion: CK_VERSION_PTR,
    ppInterface: CK_INTERFACE_PTR_PTR,
) -> CK_RV {
    if ppInterface.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    // SAFETY: non-null name and version pointers are valid per the contract.
    let wants_pkcs11 = pInterfaceName.is_null()
        || unsafe { CStr::from_ptr(pInterfaceName.cast()) } == PKCS11_INTERFACE_NAME;
    // SAFETY: as above.
    let wants_2x = pVersion.is_null() || unsafe { (*pVersion).major } == 2;
    if !(wants_pkcs11 && wants_2x) {
        return CKR_ARGUMENTS_BAD;
    }
    let Some(interface) = emulated_interface() else {
        return CKR_GENERAL_ERROR;
    };
    // SAFETY: ppInterface is non-null.
    unsafe { *ppInterface = interface };
    CKR_OK
}

/// The shim's own `C_GetInfo` after the application's `C_Initialize` (recorded as internal),
/// through the table of `interface`: returns the provider string. Handed to the client as
/// [`client::Upcalls::provider`].
fn internal_get_info(interface: Option<InterfaceVersion>) -> Option<String> {
    let slot = interface.map_or(0, |v| {
        real::slot_of_version(CK_VERSION {
            major: v.major,
            minor: v.minor,
        })
    });
    let list = real::list_at(slot);
    if list.is_null() {
        return None;
    }
    // SAFETY: C_GetInfo is in every layout; read through the raw pointer.
    let get_info = unsafe { (*list).C_GetInfo }?;
    // SAFETY: CK_INFO is plain data; all-zero is a valid value.
    let mut info: CK_INFO = unsafe { std::mem::zeroed() };
    let info_ptr = &raw mut info;
    let rv = trace::record_call(
        Func::C_GetInfo,
        interface,
        record_flags::INTERNAL,
        |_| {},
        // SAFETY: a valid out-pointer to our local.
        || unsafe { get_info(info_ptr) },
        // SAFETY: the module filled `info` when rv is CKR_OK.
        |call, rv| unsafe { roles::info_out::after(call, rv, info_ptr) },
    );
    (rv == CKR_OK).then(|| {
        provider_string(
            &fixed_text(&info.manufacturerID),
            &fixed_text(&info.libraryDescription),
            (info.libraryVersion.major, info.libraryVersion.minor),
        )
    })
}
