//! # p11trace-ffi
//!
//! The PKCS#11 C definitions, from one place: pkcs11-sys re-exported plus the 3.x
//! structs/typedefs it lacks.
//!
//! `pkcs11-sys` covers PKCS#11 3.0 (the 2.40 and 3.0 function lists among them). Added here: the
//! PKCS#11 3.2 types (`CK_ASYNC_DATA`, the twelve new function typedefs and
//! `CK_FUNCTION_LIST_3_2`), the exported entry points as resolved symbols, and the standard
//! interface name. Both the shim and the `p11count` test module take every C definition from
//! here; the function-list layouts are checked at compile time below.

#![allow(non_camel_case_types, non_snake_case)]

use std::ffi::CStr;

pub use pkcs11_sys::*;

/// The name of the standard interface ("PKCS 11") in `CK_INTERFACE::pInterfaceName`.
pub const PKCS11_INTERFACE_NAME: &CStr = c"PKCS 11";

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

/// `C_GetFunctionList` as a symbol resolved in a module: [`CK_C_GetFunctionList`] without the
/// `Option` (a resolved symbol is never null).
pub type GetFunctionListFn = unsafe extern "C" fn(CK_FUNCTION_LIST_PTR_PTR) -> CK_RV;
/// `C_GetInterfaceList` as a resolved symbol (see [`GetFunctionListFn`]).
pub type GetInterfaceListFn = unsafe extern "C" fn(CK_INTERFACE_PTR, CK_ULONG_PTR) -> CK_RV;
/// `C_GetInterface` as a resolved symbol (see [`GetFunctionListFn`]).
pub type GetInterfaceFn =
    unsafe extern "C" fn(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS) -> CK_RV;

// The symbol types are exactly the pkcs11-sys typedefs, minus the `Option`.
const _: fn(GetFunctionListFn) -> CK_C_GetFunctionList = Some;
const _: fn(GetInterfaceListFn) -> CK_C_GetInterfaceList = Some;
const _: fn(GetInterfaceFn) -> CK_C_GetInterface = Some;

// The twelve PKCS#11 3.2 functions.
pub type CK_C_EncapsulateKey = Option<
    unsafe extern "C" fn(
        hSession: CK_SESSION_HANDLE,
        pMechanism: CK_MECHANISM_PTR,
        hPublicKey: CK_OBJECT_HANDLE,
        pTemplate: CK_ATTRIBUTE_PTR,
        ulAttributeCount: CK_ULONG,
        pCiphertext: CK_BYTE_PTR,
        pulCiphertextLen: CK_ULONG_PTR,
        phKey: CK_OBJECT_HANDLE_PTR,
    ) -> CK_RV,
>;
pub type CK_C_DecapsulateKey = Option<
    unsafe extern "C" fn(
        hSession: CK_SESSION_HANDLE,
        pMechanism: CK_MECHANISM_PTR,
        hPrivateKey: CK_OBJECT_HANDLE,
        pTemplate: CK_ATTRIBUTE_PTR,
        ulAttributeCount: CK_ULONG,
        pCiphertext: CK_BYTE_PTR,
        ulCiphertextLen: CK_ULONG,
        phKey: CK_OBJECT_HANDLE_PTR,
    ) -> CK_RV,
>;
pub type CK_C_VerifySignatureInit = Option<
    unsafe extern "C" fn(
        hSession: CK_SESSION_HANDLE,
        pMechanism: CK_MECHANISM_PTR,
        hKey: CK_OBJECT_HANDLE,
        pSignature: CK_BYTE_PTR,
        ulSignatureLen: CK_ULONG,
    ) -> CK_RV,
>;
pub type CK_C_VerifySignature = Option<
    unsafe extern "C" fn(
        hSession: CK_SESSION_HANDLE,
        pData: CK_BYTE_PTR,
        ulDataLen: CK_ULONG,
    ) -> CK_RV,
>;
pub type CK_C_VerifySignatureUpdate = Option<
    unsafe extern "C" fn(
        hSession: CK_SESSION_HANDLE,
        pPart: CK_BYTE_PTR,
        ulPartLen: CK_ULONG,
    ) -> CK_RV,
>;
pub type CK_C_VerifySignatureFinal =
    Option<unsafe extern "C" fn(hSession: CK_SESSION_HANDLE) -> CK_RV>;
pub type CK_C_GetSessionValidationFlags = Option<
    unsafe extern "C" fn(
        hSession: CK_SESSION_HANDLE,
        type_: CK_SESSION_VALIDATION_FLAGS_TYPE,
        pFlags: CK_FLAGS_PTR,
    ) -> CK_RV,
>;
pub type CK_C_AsyncComplete = Option<
    unsafe extern "C" fn(
        hSession: CK_SESSION_HANDLE,
        pFunctionName: CK_UTF8CHAR_PTR,
        pResult: CK_ASYNC_DATA_PTR,
    ) -> CK_RV,
>;
pub type CK_C_AsyncGetID = Option<
    unsafe extern "C" fn(
        hSession: CK_SESSION_HANDLE,
        pFunctionName: CK_UTF8CHAR_PTR,
        pulID: CK_ULONG_PTR,
    ) -> CK_RV,
>;
pub type CK_C_AsyncJoin = Option<
    unsafe extern "C" fn(
        hSession: CK_SESSION_HANDLE,
        pFunctionName: CK_UTF8CHAR_PTR,
        ulID: CK_ULONG,
        pData: CK_BYTE_PTR,
        ulData: CK_ULONG,
    ) -> CK_RV,
>;
pub type CK_C_WrapKeyAuthenticated = Option<
    unsafe extern "C" fn(
        hSession: CK_SESSION_HANDLE,
        pMechanism: CK_MECHANISM_PTR,
        hWrappingKey: CK_OBJECT_HANDLE,
        hKey: CK_OBJECT_HANDLE,
        pAssociatedData: CK_BYTE_PTR,
        ulAssociatedDataLen: CK_ULONG,
        pWrappedKey: CK_BYTE_PTR,
        pulWrappedKeyLen: CK_ULONG_PTR,
    ) -> CK_RV,
>;
pub type CK_C_UnwrapKeyAuthenticated = Option<
    unsafe extern "C" fn(
        hSession: CK_SESSION_HANDLE,
        pMechanism: CK_MECHANISM_PTR,
        hUnwrappingKey: CK_OBJECT_HANDLE,
        pWrappedKey: CK_BYTE_PTR,
        ulWrappedKeyLen: CK_ULONG,
        pTemplate: CK_ATTRIBUTE_PTR,
        ulAttributeCount: CK_ULONG,
        pAssociatedData: CK_BYTE_PTR,
        ulAssociatedDataLen: CK_ULONG,
        phKey: CK_OBJECT_HANDLE_PTR,
    ) -> CK_RV,
>;

/// `CK_FUNCTION_LIST_3_2`: the 3.0 list followed by the twelve PKCS#11 3.2 functions.
#[repr(C)]
#[derive(Copy, Clone)]
pub struct CK_FUNCTION_LIST_3_2 {
    pub version: CK_VERSION,
    pub C_Initialize: CK_C_Initialize,
    pub C_Finalize: CK_C_Finalize,
    pub C_GetInfo: CK_C_GetInfo,
    pub C_GetFunctionList: CK_C_GetFunctionList,
    pub C_GetSlotList: CK_C_GetSlotList,
    pub C_GetSlotInfo: CK_C_GetSlotInfo,
    pub C_GetTokenInfo: CK_C_GetTokenInfo,
    pub C_GetMechanismList: CK_C_GetMechanismList,
    pub C_GetMechanismInfo: CK_C_GetMechanismInfo,
    pub C_InitToken: CK_C_InitToken,
    pub C_InitPIN: CK_C_InitPIN,
    pub C_SetPIN: CK_C_SetPIN,
    pub C_OpenSession: CK_C_OpenSession,
    pub C_CloseSession: CK_C_CloseSession,
    pub C_CloseAllSessions: CK_C_CloseAllSessions,
    pub C_GetSessionInfo: CK_C_GetSessionInfo,
    pub C_GetOperationState: CK_C_GetOperationState,
    pub C_SetOperationState: CK_C_SetOperationState,
    pub C_Login: CK_C_Login,
    pub C_Logout: CK_C_Logout,
    pub C_CreateObject: CK_C_CreateObject,
    pub C_CopyObject: CK_C_CopyObject,
    pub C_DestroyObject: CK_C_DestroyObject,
    pub C_GetObjectSize: CK_C_GetObjectSize,
    pub C_GetAttributeValue: CK_C_GetAttributeValue,
    pub C_SetAttributeValue: CK_C_SetAttributeValue,
    pub C_FindObjectsInit: CK_C_FindObjectsInit,
    pub C_FindObjects: CK_C_FindObjects,
    pub C_FindObjectsFinal: CK_C_FindObjectsFinal,
    pub C_EncryptInit: CK_C_EncryptInit,
    pub C_Encrypt: CK_C_Encrypt,
    pub C_EncryptUpdate: CK_C_EncryptUpdate,
    pub C_EncryptFinal: CK_C_EncryptFinal,
    pub C_DecryptInit: CK_C_DecryptInit,
    pub C_Decrypt: CK_C_Decrypt,
    pub C_DecryptUpdate: CK_C_DecryptUpdate,
    pub C_DecryptFinal: CK_C_DecryptFinal,
    pub C_DigestInit: CK_C_DigestInit,
    pub C_Digest: CK_C_Digest,
    pub C_DigestUpdate: CK_C_DigestUpdate,
    pub C_DigestKey: CK_C_DigestKey,
    pub C_DigestFinal: CK_C_DigestFinal,
    pub C_SignInit: CK_C_SignInit,
    pub C_Sign: CK_C_Sign,
    pub C_SignUpdate: CK_C_SignUpdate,
    pub C_SignFinal: CK_C_SignFinal,
    pub C_SignRecoverInit: CK_C_SignRecoverInit,
    pub C_SignRecover: CK_C_SignRecover,
    pub C_VerifyInit: CK_C_VerifyInit,
    pub C_Verify: CK_C_Verify,
    pub C_VerifyUpdate: CK_C_VerifyUpdate,
    pub C_VerifyFinal: CK_C_VerifyFinal,
    pub C_VerifyRecoverInit: CK_C_VerifyRecoverInit,
    pub C_VerifyRecover: CK_C_VerifyRecover,
    pub C_DigestEncryptUpdate: CK_C_DigestEncryptUpdate,
    pub C_DecryptDigestUpdate: CK_C_DecryptDigestUpdate,
    pub C_SignEncryptUpdate: CK_C_SignEncryptUpdate,
    pub C_DecryptVerifyUpdate: CK_C_DecryptVerifyUpdate,
    pub C_GenerateKey: CK_C_GenerateKey,
    pub C_GenerateKeyPair: CK_C_GenerateKeyPair,
    pub C_WrapKey: CK_C_WrapKey,
    pub C_UnwrapKey: CK_C_UnwrapKey,
    pub C_DeriveKey: CK_C_DeriveKey,
    pub C_SeedRandom: CK_C_SeedRandom,
    pub C_GenerateRandom: CK_C_GenerateRandom,
    pub C_GetFunctionStatus: CK_C_GetFunctionStatus,
    pub C_CancelFunction: CK_C_CancelFunction,
    pub C_WaitForSlotEvent: CK_C_WaitForSlotEvent,
    pub C_GetInterfaceList: CK_C_GetInterfaceList,
    pub C_GetInterface: CK_C_GetInterface,
    pub C_LoginUser: CK_C_LoginUser,
    pub C_SessionCancel: CK_C_SessionCancel,
    pub C_MessageEncryptInit: CK_C_MessageEncryptInit,
    pub C_EncryptMessage: CK_C_EncryptMessage,
    pub C_EncryptMessageBegin: CK_C_EncryptMessageBegin,
    pub C_EncryptMessageNext: CK_C_EncryptMessageNext,
    pub C_MessageEncryptFinal: CK_C_MessageEncryptFinal,
    pub C_MessageDecryptInit: CK_C_MessageDecryptInit,
    pub C_DecryptMessage: CK_C_DecryptMessage,
    pub C_DecryptMessageBegin: CK_C_DecryptMessageBegin,
    pub C_DecryptMessageNext: CK_C_DecryptMessageNext,
    pub C_MessageDecryptFinal: CK_C_MessageDecryptFinal,
    pub C_MessageSignInit: CK_C_MessageSignInit,
    pub C_SignMessage: CK_C_SignMessage,
    pub C_SignMessageBegin: CK_C_SignMessageBegin,
    pub C_SignMessageNext: CK_C_SignMessageNext,
    pub C_MessageSignFinal: CK_C_MessageSignFinal,
    pub C_MessageVerifyInit: CK_C_MessageVerifyInit,
    pub C_VerifyMessage: CK_C_VerifyMessage,
    pub C_VerifyMessageBegin: CK_C_VerifyMessageBegin,
    pub C_VerifyMessageNext: CK_C_VerifyMessageNext,
    pub C_MessageVerifyFinal: CK_C_MessageVerifyFinal,
    pub C_EncapsulateKey: CK_C_EncapsulateKey,
    pub C_DecapsulateKey: CK_C_DecapsulateKey,
    pub C_VerifySignatureInit: CK_C_VerifySignatureInit,
    pub C_VerifySignature: CK_C_VerifySignature,
    pub C_VerifySignatureUpdate: CK_C_VerifySignatureUpdate,
    pub C_VerifySignatureFinal: CK_C_VerifySignatureFinal,
    pub C_GetSessionValidationFlags: CK_C_GetSessionValidationFlags,
    pub C_AsyncComplete: CK_C_AsyncComplete,
    pub C_AsyncGetID: CK_C_AsyncGetID,
    pub C_AsyncJoin: CK_C_AsyncJoin,
    pub C_WrapKeyAuthenticated: CK_C_WrapKeyAuthenticated,
    pub C_UnwrapKeyAuthenticated: CK_C_UnwrapKeyAuthenticated,
}

// The sizes the C headers give on x86-64 (version + 68, 92 and 104 function pointers).
#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(std::mem::size_of::<CK_FUNCTION_LIST>() == 552);
    assert!(std::mem::size_of::<CK_FUNCTION_LIST_3_0>() == 744);
    assert!(std::mem::size_of::<CK_FUNCTION_LIST_3_2>() == 840);
    assert!(std::mem::size_of::<CK_ASYNC_DATA>() == 40);
};

// The 3.2 list extends the 3.0 list: every shared entry sits at the same offset.
const _: () = {
    use std::mem::offset_of;
    assert!(
        offset_of!(CK_FUNCTION_LIST_3_2, C_Initialize)
            == offset_of!(CK_FUNCTION_LIST_3_0, C_Initialize)
    );
    assert!(
        offset_of!(CK_FUNCTION_LIST_3_2, C_MessageVerifyFinal)
            == offset_of!(CK_FUNCTION_LIST_3_0, C_MessageVerifyFinal)
    );
    assert!(
        offset_of!(CK_FUNCTION_LIST_3_2, C_EncapsulateKey)
            == std::mem::size_of::<CK_FUNCTION_LIST_3_0>()
    );
};
