//! The traced function tables and their wrappers, generated from the one function table in
//! `p11trace_record::with_pkcs11_functions!`.
//!
//! Every wrapper is generic over the slot `V` it belongs to (see `real.rs`), so a call through the
//! 3.2 table forwards to the real 3.2 table and is recorded with that interface version. The
//! 2.40 and 3.0 lists are `pkcs11-sys` types: filling them from our declarations makes the compiler
//! check every signature against the header. The 3.2 list is declared here.

#![allow(non_snake_case, non_camel_case_types)]

use std::ffi::c_void;
use std::sync::OnceLock;

use p11trace_record::Func;

use crate::ffi::*;
use crate::{real, roles};

/// Routes the three functions that hand out tables to `entry.rs`; every other function forwards.
// SAFETY (entry calls): the caller's arguments, passed on under the same PKCS#11 contract.
macro_rules! forward {
    (C_GetFunctionList, $slot:ident, ($($a:ident),*), $default:block) => {
        unsafe { crate::entry::get_function_list($($a),*) }
    };
    (C_GetInterfaceList, $slot:ident, ($($a:ident),*), $default:block) => {
        unsafe { crate::entry::get_interface_list($($a),*) }
    };
    (C_GetInterface, $slot:ident, ($($a:ident),*), $default:block) => {
        unsafe { crate::entry::get_interface($($a),*) }
    };
    ($other:ident, $slot:ident, $args:tt, $default:block) => {
        $default
    };
}

macro_rules! define_shim {
    (v2_40 { $($v240:tt)* } v3_0 { $($v30:tt)* } v3_2 { $($v32:tt)* }) => {
        define_shim!(@struct $($v240)* $($v30)* $($v32)*);
        define_shim!(@wrappers $($v240)* $($v30)* $($v32)*);
        define_shim!(@list traced_2_40, CK_FUNCTION_LIST, [$($v240)*]);
        define_shim!(@list traced_3_0, CK_FUNCTION_LIST_3_0, [$($v240)* $($v30)*]);
        define_shim!(@list traced_3_2, CK_FUNCTION_LIST_3_2, [$($v240)* $($v30)* $($v32)*]);
    };
    (@struct $(
        $name:ident ( $( $arg:ident : $ty:ty => $role:ident $( ( $($extra:ident),* ) )? ),* $(,)? ) [ $($op:tt)* ] ;
    )*) => {
        /// `CK_FUNCTION_LIST_3_2`: the 3.0 list followed by the twelve PKCS#11 3.2 functions.
        #[repr(C)]
        #[derive(Copy, Clone)]
        pub struct CK_FUNCTION_LIST_3_2 {
            pub version: CK_VERSION,
            $( pub $name: Option<unsafe extern "C" fn($($ty),*) -> CK_RV>, )*
        }
    };
    (@list $builder:ident, $list:ident, [ $( $name:ident ( $($args:tt)* ) [ $($op:tt)* ] ; )* ]) => {
        fn $builder<const V: usize>(version: CK_VERSION) -> $list {
            $list { version, $( $name: Some(wrappers::$name::<V>), )* }
        }
    };
    (@wrappers $(
        $name:ident ( $( $arg:ident : $ty:ty => $role:ident $( ( $($extra:ident),* ) )? ),* $(,)? ) [ $($op:tt)* ] ;
    )*) => {
        /// One traced wrapper per PKCS#11 function.
        mod wrappers {
            use super::*;
            $(
                pub(super) unsafe extern "C" fn $name<const V: usize>($($arg: $ty),*) -> CK_RV {
                    forward!($name, V, ($($arg),*), {
                        crate::trace::call::<V>(
                            Func::$name,
                            // SAFETY (every role call): the arguments are the caller's, passed on
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
                            |call, rv| { $( unsafe { roles::$role::after(call, rv, $arg $($(, $extra)*)?) }; )* },
                        )
                    })
                }
            )*
        }
    };
}

p11trace_record::with_pkcs11_functions!(define_shim);

#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<CK_FUNCTION_LIST_3_2>() == 840);

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

/// The traced table of `slot` (which must have a real table installed), built on first use with
/// the real table's version.
pub fn traced_table(slot: usize) -> *mut c_void {
    let version = real::slot_version(slot);
    match slot {
        0 => SLOT_0.get(|| traced_2_40::<0>(version)),
        1 => SLOT_1.get(|| traced_3_0::<1>(version)),
        2 => SLOT_2.get(|| traced_3_0::<2>(version)),
        _ => SLOT_3.get(|| traced_3_2::<3>(version)),
    }
}
