//! PKCS#11 C types: everything from `pkcs11-sys` (the 2.40 and 3.0 function lists), plus the
//! PKCS#11 3.2 additions `pkcs11-sys` lacks, declared here with compile-time layout checks.

#![allow(non_camel_case_types, non_snake_case, dead_code)]

pub use pkcs11_sys::*;

pub type CK_FLAGS_PTR = *mut CK_FLAGS;
pub type CK_SESSION_VALIDATION_FLAGS_TYPE = CK_ULONG;

/// `CK_ASYNC_DATA` (PKCS#11 3.2). The shim never reads it; it only forwards the pointer.
#[repr(C)]
#[derive(Debug, Copy, Clone)]
pub struct CK_ASYNC_DATA {
    pub ulVersion: CK_ULONG,
    pub pValue: *mut CK_BYTE,
    pub ulValue: CK_ULONG,
    pub hObject: CK_OBJECT_HANDLE,
    pub hAdditionalObject: CK_OBJECT_HANDLE,
}
pub type CK_ASYNC_DATA_PTR = *mut CK_ASYNC_DATA;

// The 3.2 function list is generated in `tables.rs` from the one function table; these are the
// sizes the C headers give on x86-64 (version + 68, 92 and 104 function pointers).
#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(std::mem::size_of::<CK_FUNCTION_LIST>() == 552);
    assert!(std::mem::size_of::<CK_FUNCTION_LIST_3_0>() == 744);
    assert!(std::mem::size_of::<CK_ASYNC_DATA>() == 40);
};

/// `CKF_INTERFACE_FORK_SAFE`.
pub const CKF_INTERFACE_FORK_SAFE: CK_FLAGS = 0x1;
