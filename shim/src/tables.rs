//! The traced function tables and their wrappers, generated from the one function table in
//! `p11trace_record::with_pkcs11_functions!`.
//!
//! Every wrapper is generic over the slot `V` it belongs to (see `real.rs`), so a call through the
//! 3.2 table forwards to the real 3.2 table and is recorded with that interface version. The
//! lists are `p11trace-ffi` types (2.40 and 3.0 from `pkcs11-sys`, 3.2 declared there): filling
//! them from our declarations makes the compiler check every signature against the header.
//!
//! The three functions that hand out tables (`C_GetFunctionList`, `C_GetInterfaceList`,
//! `C_GetInterface`) return these very tables, so they live in `entry.rs`, which hands them down
//! as [`EntryPoints`] with each request instead of this module calling up into it.

#![allow(non_snake_case)]

use std::ffi::c_void;
use std::sync::OnceLock;

use p11trace_ffi::*;
use p11trace_record::Func;

use crate::{real, roles};

/// `entry.rs`'s in-table `C_GetFunctionList`, `C_GetInterfaceList` and `C_GetInterface`.
pub struct EntryPoints {
    pub get_function_list: CK_C_GetFunctionList,
    pub get_interface_list: CK_C_GetInterfaceList,
    pub get_interface: CK_C_GetInterface,
}

/// The table entry of one function: `entry.rs`'s for the three that hand out tables, else the
/// generated wrapper.
macro_rules! table_entry {
    (C_GetFunctionList, $slot:ident, $entries:ident) => {
        $entries.get_function_list
    };
    (C_GetInterfaceList, $slot:ident, $entries:ident) => {
        $entries.get_interface_list
    };
    (C_GetInterface, $slot:ident, $entries:ident) => {
        $entries.get_interface
    };
    ($other:ident, $slot:ident, $entries:ident) => {
        Some(wrappers::$other::<$slot>)
    };
}

/// One traced wrapper; none for the three functions `entry.rs` supplies.
macro_rules! wrapper {
    (C_GetFunctionList $($rest:tt)*) => {};
    (C_GetInterfaceList $($rest:tt)*) => {};
    (C_GetInterface $($rest:tt)*) => {};
    ($name:ident ( $( $arg:ident : $ty:ty => $role:ident $( ( $($extra:ident),* ) )? ),* )) => {
        pub(super) unsafe extern "C" fn $name<const V: usize>($($arg: $ty),*) -> CK_RV {
            crate::trace::call::<V>(
                Func::$name,
                // SAFETY: (every role call) the arguments are the caller's, passed on
                // unchanged; roles read only memory the PKCS#11 contract lets the
                // module read (inputs before the call, outputs after it).
                |call| { $( unsafe { roles::$role::before(call, $arg $($(, $extra)*)?) }; )* },
                || {
                    let list = real::list::<V>();
                    if list.is_null() {
                        return CKR_GENERAL_ERROR;
                    }
                    // SAFETY: this wrapper only sits in tables of slots whose real
                    // layout has this entry; the field is read through the raw pointer
                    // without referencing the whole (possibly shorter) struct.
                    match unsafe { (*list).$name } {
                        // SAFETY: forwarding the caller's arguments to the real module.
                        Some(real_fn) => unsafe { real_fn($($arg),*) },
                        None => CKR_FUNCTION_NOT_SUPPORTED,
                    }
                },
                // SAFETY: as for the `before` calls.
                |call, rv| { $( unsafe { roles::$role::after(call, rv, $arg $($(, $extra)*)?) }; )* },
            )
        }
    };
}

macro_rules! define_shim {
    (v2_40 { $($v240:tt)* } v3_0 { $($v30:tt)* } v3_2 { $($v32:tt)* }) => {
        define_shim!(@wrappers $($v240)* $($v30)* $($v32)*);
        define_shim!(@list traced_2_40, CK_FUNCTION_LIST, [$($v240)*]);
        define_shim!(@list traced_3_0, CK_FUNCTION_LIST_3_0, [$($v240)* $($v30)*]);
        define_shim!(@list traced_3_2, CK_FUNCTION_LIST_3_2, [$($v240)* $($v30)* $($v32)*]);
    };
    (@list $builder:ident, $list:ident, [ $( $name:ident ( $($args:tt)* ) [ $($op:tt)* ] ; )* ]) => {
        fn $builder<const V: usize>(version: CK_VERSION, entries: &EntryPoints) -> $list {
            $list { version, $( $name: table_entry!($name, V, entries), )* }
        }
    };
    (@wrappers $(
        $name:ident ( $( $arg:ident : $ty:ty => $role:ident $( ( $($extra:ident),* ) )? ),* $(,)? ) [ $($op:tt)* ] ;
    )*) => {
        /// One traced wrapper per PKCS#11 function (but the three `entry.rs` supplies).
        mod wrappers {
            use super::*;
            $( wrapper!($name ( $( $arg : $ty => $role $( ( $($extra),* ) )? ),* )); )*
        }
    };
}

p11trace_record::with_pkcs11_functions!(define_shim);

/// A traced table with a stable address for the process's life.
struct Traced<T>(OnceLock<T>);

impl<T> Traced<T> {
    const fn new() -> Self {
        Traced(OnceLock::new())
    }

    fn get(&'static self, build: impl FnOnce() -> T) -> *mut c_void {
        std::ptr::from_ref(self.0.get_or_init(build))
            .cast_mut()
            .cast()
    }
}

static SLOT_0: Traced<CK_FUNCTION_LIST> = Traced::new();
static SLOT_1: Traced<CK_FUNCTION_LIST_3_0> = Traced::new();
static SLOT_2: Traced<CK_FUNCTION_LIST_3_0> = Traced::new();
static SLOT_3: Traced<CK_FUNCTION_LIST_3_2> = Traced::new();
static SLOT_4: Traced<CK_FUNCTION_LIST> = Traced::new();
static SLOT_5: Traced<CK_FUNCTION_LIST_3_0> = Traced::new();
static SLOT_6: Traced<CK_FUNCTION_LIST_3_0> = Traced::new();
static SLOT_7: Traced<CK_FUNCTION_LIST_3_2> = Traced::new();

/// The version a traced table reports: the real table's, but never newer than the traced
/// table's own layout (a 3.5 table is traced through the 3.2 layout and says 3.2).
fn traced_version(slot: usize) -> CK_VERSION {
    let real = real::slot_version(slot);
    let layout = real::layout_version(slot);
    if (real.major, real.minor) > (layout.major, layout.minor) {
        layout
    } else {
        real
    }
}

/// The traced table of `slot` (which must have a real table installed), built on first use with
/// the real table's version (clamped to the layout's, see [`traced_version`]) and `entries` in
/// the three table-handing places.
pub fn traced_table(slot: usize, entries: &EntryPoints) -> *mut c_void {
    let version = traced_version(slot);
    const _: () = assert!(real::SLOTS == 8, "one traced table per slot");
    match slot {
        0 => SLOT_0.get(|| traced_2_40::<0>(version, entries)),
        1 => SLOT_1.get(|| traced_3_0::<1>(version, entries)),
        2 => SLOT_2.get(|| traced_3_0::<2>(version, entries)),
        3 => SLOT_3.get(|| traced_3_2::<3>(version, entries)),
        4 => SLOT_4.get(|| traced_2_40::<4>(version, entries)),
        5 => SLOT_5.get(|| traced_3_0::<5>(version, entries)),
        6 => SLOT_6.get(|| traced_3_0::<6>(version, entries)),
        _ => SLOT_7.get(|| traced_3_2::<7>(version, entries)),
    }
}
