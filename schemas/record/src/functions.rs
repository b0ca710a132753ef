//! The one declaration of every PKCS#11 function (2.40, 3.0 and 3.2), in function-list order.
//!
//! Each entry names the function, its C arguments with their types, and the *role* of each
//! argument: which `calls` column it fills (see `schemas/calls.md`, "Argument roles"). The shim
//! expands this table into its traced function lists and wrappers; this crate expands it into
//! [`Func`] and [`FUNCTIONS`], which the spy importer uses to map argument names to columns by
//! [`Role`] (so a renamed role is a compile error there, not a silently empty column).
//!
//! Grammar, per function:
//! `Name(arg: CType => role(extra_args...), ...) [op Kind Stage];`
//! where `extra_args` name other arguments the role needs (a length, a count), and the optional
//! `[op Kind Stage]` says which multi-part operation the call belongs to (for `op_id`).
//! Roles that never read memory are marked in the shim; `secret` roles never read their bytes.

/// Invokes `$callback!` with the whole function table, grouped by the interface that added them.
#[macro_export]
macro_rules! with_pkcs11_functions {
    ($callback:path) => {
        $callback! {
        v2_40 {
            C_Initialize(pInitArgs: CK_VOID_PTR => init_args) [];
            C_Finalize(pReserved: CK_VOID_PTR => ignore) [];
            C_GetInfo(pInfo: CK_INFO_PTR => info_out) [];
            C_GetFunctionList(ppFunctionList: CK_FUNCTION_LIST_PTR_PTR => ignore) [];
            C_GetSlotList(tokenPresent: CK_BBOOL => token_present, pSlotList: CK_SLOT_ID_PTR => ignore,
                pulCount: CK_ULONG_PTR => count_out) [];
            C_GetSlotInfo(slotID: CK_SLOT_ID => slot, pInfo: CK_SLOT_INFO_PTR => slot_info_out) [];
            C_GetTokenInfo(slotID: CK_SLOT_ID => slot, pInfo: CK_TOKEN_INFO_PTR => token_info_out) [];
            C_GetMechanismList(slotID: CK_SLOT_ID => slot, pMechanismList: CK_MECHANISM_TYPE_PTR => ignore,
                pulCount: CK_ULONG_PTR => count_out) [];
            C_GetMechanismInfo(slotID: CK_SLOT_ID => slot, type_: CK_MECHANISM_TYPE => mech_type,
                pInfo: CK_MECHANISM_INFO_PTR => mech_info_out) [];
            C_InitToken(slotID: CK_SLOT_ID => slot, pPin: CK_UTF8CHAR_PTR => secret, ulPinLen: CK_ULONG => in_len,
                pLabel: CK_UTF8CHAR_PTR => token_label) [];
            C_InitPIN(hSession: CK_SESSION_HANDLE => session, pPin: CK_UTF8CHAR_PTR => secret,
                ulPinLen: CK_ULONG => in_len) [];
            C_SetPIN(hSession: CK_SESSION_HANDLE => session, pOldPin: CK_UTF8CHAR_PTR => secret,
                ulOldLen: CK_ULONG => ignore, pNewPin: CK_UTF8CHAR_PTR => secret, ulNewLen: CK_ULONG => in_len) [];
            C_OpenSession(slotID: CK_SLOT_ID => slot, flags: CK_FLAGS => flags, pApplication: CK_VOID_PTR => ignore,
                Notify: CK_NOTIFY => ignore, phSession: CK_SESSION_HANDLE_PTR => session_out) [];
            C_CloseSession(hSession: CK_SESSION_HANDLE => session) [];
            C_CloseAllSessions(slotID: CK_SLOT_ID => slot) [];
            C_GetSessionInfo(hSession: CK_SESSION_HANDLE => session, pInfo: CK_SESSION_INFO_PTR => session_info_out) [];
            C_GetOperationState(hSession: CK_SESSION_HANDLE => session, pOperationState: CK_BYTE_PTR => ignore,
                pulOperationStateLen: CK_ULONG_PTR => out_len(pOperationState)) [];
            C_SetOperationState(hSession: CK_SESSION_HANDLE => session, pOperationState: CK_BYTE_PTR => ignore,
                ulOperationStateLen: CK_ULONG => in_len, hEncryptionKey: CK_OBJECT_HANDLE => object,
                hAuthenticationKey: CK_OBJECT_HANDLE => object2) [];
            C_Login(hSession: CK_SESSION_HANDLE => session, userType: CK_USER_TYPE => user,
                pPin: CK_UTF8CHAR_PTR => secret, ulPinLen: CK_ULONG => in_len) [];
            C_Logout(hSession: CK_SESSION_HANDLE => session) [];
            C_CreateObject(hSession: CK_SESSION_HANDLE => session, pTemplate: CK_ATTRIBUTE_PTR => ignore,
                ulCount: CK_ULONG => template_in(pTemplate), phObject: CK_OBJECT_HANDLE_PTR => object_out) [];
            C_CopyObject(hSession: CK_SESSION_HANDLE => session, hObject: CK_OBJECT_HANDLE => object,
                pTemplate: CK_ATTRIBUTE_PTR => ignore, ulCount: CK_ULONG => template_in(pTemplate),
                phNewObject: CK_OBJECT_HANDLE_PTR => object_out) [];
            C_DestroyObject(hSession: CK_SESSION_HANDLE => session, hObject: CK_OBJECT_HANDLE => object) [];
            C_GetObjectSize(hSession: CK_SESSION_HANDLE => session, hObject: CK_OBJECT_HANDLE => object,
                pulSize: CK_ULONG_PTR => size_out) [];
            C_GetAttributeValue(hSession: CK_SESSION_HANDLE => session, hObject: CK_OBJECT_HANDLE => object,
                pTemplate: CK_ATTRIBUTE_PTR => ignore, ulCount: CK_ULONG => template_out(pTemplate)) [];
            C_SetAttributeValue(hSession: CK_SESSION_HANDLE => session, hObject: CK_OBJECT_HANDLE => object,
                pTemplate: CK_ATTRIBUTE_PTR => ignore, ulCount: CK_ULONG => template_in(pTemplate)) [];
            C_FindObjectsInit(hSession: CK_SESSION_HANDLE => session, pTemplate: CK_ATTRIBUTE_PTR => ignore,
                ulCount: CK_ULONG => template_in(pTemplate)) [op Find Init];
            C_FindObjects(hSession: CK_SESSION_HANDLE => session, phObject: CK_OBJECT_HANDLE_PTR => ignore,
                ulMaxObjectCount: CK_ULONG => ignore, pulObjectCount: CK_ULONG_PTR => found_objects(phObject, ulMaxObjectCount))
                [op Find Update];
            C_FindObjectsFinal(hSession: CK_SESSION_HANDLE => session) [op Find Final];
            C_EncryptInit(hSession: CK_SESSION_HANDLE => session, pMechanism: CK_MECHANISM_PTR => mechanism,
                hKey: CK_OBJECT_HANDLE => object) [op Encrypt Init];
            C_Encrypt(hSession: CK_SESSION_HANDLE => session, pData: CK_BYTE_PTR => ignore, ulDataLen: CK_ULONG => in_len,
                pEncryptedData: CK_BYTE_PTR => ignore, pulEncryptedDataLen: CK_ULONG_PTR => out_len(pEncryptedData)) [op Encrypt Single];
            C_EncryptUpdate(hSession: CK_SESSION_HANDLE => session, pPart: CK_BYTE_PTR => ignore, ulPartLen: CK_ULONG => in_len,
                pEncryptedPart: CK_BYTE_PTR => ignore, pulEncryptedPartLen: CK_ULONG_PTR => out_len(pEncryptedPart)) [op Encrypt Update];
            C_EncryptFinal(hSession: CK_SESSION_HANDLE => session, pLastEncryptedPart: CK_BYTE_PTR => ignore,
                pulLastEncryptedPartLen: CK_ULONG_PTR => out_len(pLastEncryptedPart)) [op Encrypt Final];
            C_DecryptInit(hSession: CK_SESSION_HANDLE => session, pMechanism: CK_MECHANISM_PTR => mechanism,
                hKey: CK_OBJECT_HANDLE => object) [op Decrypt Init];
            C_Decrypt(hSession: CK_SESSION_HANDLE => session, pEncryptedData: CK_BYTE_PTR => ignore,
                ulEncryptedDataLen: CK_ULONG => in_len, pData: CK_BYTE_PTR => ignore, pulDataLen: CK_ULONG_PTR => out_len(pData))
                [op Decrypt Single];
            C_DecryptUpdate(hSession: CK_SESSION_HANDLE => session, pEncryptedPart: CK_BYTE_PTR => ignore,
                ulEncryptedPartLen: CK_ULONG => in_len, pPart: CK_BYTE_PTR => ignore, pulPartLen: CK_ULONG_PTR => out_len(pPart))
                [op Decrypt Update];
            C_DecryptFinal(hSession: CK_SESSION_HANDLE => session, pLastPart: CK_BYTE_PTR => ignore,
                pulLastPartLen: CK_ULONG_PTR => out_len(pLastPart)) [op Decrypt Final];
            C_DigestInit(hSession: CK_SESSION_HANDLE => session, pMechanism: CK_MECHANISM_PTR => mechanism) [op Digest Init];
            C_Digest(hSession: CK_SESSION_HANDLE => session, pData: CK_BYTE_PTR => ignore, ulDataLen: CK_ULONG => in_len,
                pDigest: CK_BYTE_PTR => ignore, pulDigestLen: CK_ULONG_PTR => out_len(pDigest)) [op Digest Single];
            C_DigestUpdate(hSession: CK_SESSION_HANDLE => session, pPart: CK_BYTE_PTR => ignore,
                ulPartLen: CK_ULONG => in_len) [op Digest Update];
            C_DigestKey(hSession: CK_SESSION_HANDLE => session, hKey: CK_OBJECT_HANDLE => object) [op Digest Update];
            C_DigestFinal(hSession: CK_SESSION_HANDLE => session, pDigest: CK_BYTE_PTR => ignore,
                pulDigestLen: CK_ULONG_PTR => out_len(pDigest)) [op Digest Final];
            C_SignInit(hSession: CK_SESSION_HANDLE => session, pMechanism: CK_MECHANISM_PTR => mechanism,
                hKey: CK_OBJECT_HANDLE => object) [op Sign Init];
            C_Sign(hSession: CK_SESSION_HANDLE => session, pData: CK_BYTE_PTR => ignore, ulDataLen: CK_ULONG => in_len,
                pSignature: CK_BYTE_PTR => ignore, pulSignatureLen: CK_ULONG_PTR => out_len(pSignature)) [op Sign Single];
            C_SignUpdate(hSession: CK_SESSION_HANDLE => session, pPart: CK_BYTE_PTR => ignore,
                ulPartLen: CK_ULONG => in_len) [op Sign Update];
            C_SignFinal(hSession: CK_SESSION_HANDLE => session, pSignature: CK_BYTE_PTR => ignore,
                pulSignatureLen: CK_ULONG_PTR => out_len(pSignature)) [op Sign Final];
            C_SignRecoverInit(hSession: CK_SESSION_HANDLE => session, pMechanism: CK_MECHANISM_PTR => mechanism,
                hKey: CK_OBJECT_HANDLE => object) [op SignRecover Init];
            C_SignRecover(hSession: CK_SESSION_HANDLE => session, pData: CK_BYTE_PTR => ignore, ulDataLen: CK_ULONG => in_len,
                pSignature: CK_BYTE_PTR => ignore, pulSignatureLen: CK_ULONG_PTR => out_len(pSignature)) [op SignRecover Single];
            C_VerifyInit(hSession: CK_SESSION_HANDLE => session, pMechanism: CK_MECHANISM_PTR => mechanism,
                hKey: CK_OBJECT_HANDLE => object) [op Verify Init];
            C_Verify(hSession: CK_SESSION_HANDLE => session, pData: CK_BYTE_PTR => ignore, ulDataLen: CK_ULONG => in_len,
                pSignature: CK_BYTE_PTR => ignore, ulSignatureLen: CK_ULONG => signature_len) [op Verify Single];
            C_VerifyUpdate(hSession: CK_SESSION_HANDLE => session, pPart: CK_BYTE_PTR => ignore,
                ulPartLen: CK_ULONG => in_len) [op Verify Update];
            C_VerifyFinal(hSession: CK_SESSION_HANDLE => session, pSignature: CK_BYTE_PTR => ignore,
                ulSignatureLen: CK_ULONG => signature_len) [op Verify Final];
            C_VerifyRecoverInit(hSession: CK_SESSION_HANDLE => session, pMechanism: CK_MECHANISM_PTR => mechanism,
                hKey: CK_OBJECT_HANDLE => object) [op VerifyRecover Init];
            C_VerifyRecover(hSession: CK_SESSION_HANDLE => session, pSignature: CK_BYTE_PTR => ignore,
                ulSignatureLen: CK_ULONG => in_len, pData: CK_BYTE_PTR => ignore, pulDataLen: CK_ULONG_PTR => out_len(pData))
                [op VerifyRecover Single];
            C_DigestEncryptUpdate(hSession: CK_SESSION_HANDLE => session, pPart: CK_BYTE_PTR => ignore,
                ulPartLen: CK_ULONG => in_len, pEncryptedPart: CK_BYTE_PTR => ignore,
                pulEncryptedPartLen: CK_ULONG_PTR => out_len(pEncryptedPart)) [op Encrypt Update];
            C_DecryptDigestUpdate(hSession: CK_SESSION_HANDLE => session, pEncryptedPart: CK_BYTE_PTR => ignore,
                ulEncryptedPartLen: CK_ULONG => in_len, pPart: CK_BYTE_PTR => ignore, pulPartLen: CK_ULONG_PTR => out_len(pPart))
                [op Decrypt Update];
            C_SignEncryptUpdate(hSession: CK_SESSION_HANDLE => session, pPart: CK_BYTE_PTR => ignore,
                ulPartLen: CK_ULONG => in_len, pEncryptedPart: CK_BYTE_PTR => ignore,
                pulEncryptedPartLen: CK_ULONG_PTR => out_len(pEncryptedPart)) [op Sign Update];
            C_DecryptVerifyUpdate(hSession: CK_SESSION_HANDLE => session, pEncryptedPart: CK_BYTE_PTR => ignore,
                ulEncryptedPartLen: CK_ULONG => in_len, pPart: CK_BYTE_PTR => ignore, pulPartLen: CK_ULONG_PTR => out_len(pPart))
                [op Decrypt Update];
            C_GenerateKey(hSession: CK_SESSION_HANDLE => session, pMechanism: CK_MECHANISM_PTR => mechanism,
                pTemplate: CK_ATTRIBUTE_PTR => ignore, ulCount: CK_ULONG => template_in(pTemplate),
                phKey: CK_OBJECT_HANDLE_PTR => object_out) [];
            C_GenerateKeyPair(hSession: CK_SESSION_HANDLE => session, pMechanism: CK_MECHANISM_PTR => mechanism,
                pPublicKeyTemplate: CK_ATTRIBUTE_PTR => ignore,
                ulPublicKeyAttributeCount: CK_ULONG => template_public(pPublicKeyTemplate),
                pPrivateKeyTemplate: CK_ATTRIBUTE_PTR => ignore,
                ulPrivateKeyAttributeCount: CK_ULONG => template_private(pPrivateKeyTemplate),
                phPublicKey: CK_OBJECT_HANDLE_PTR => object_out, phPrivateKey: CK_OBJECT_HANDLE_PTR => object_out) [];
            C_WrapKey(hSession: CK_SESSION_HANDLE => session, pMechanism: CK_MECHANISM_PTR => mechanism,
                hWrappingKey: CK_OBJECT_HANDLE => object2, hKey: CK_OBJECT_HANDLE => object,
                pWrappedKey: CK_BYTE_PTR => ignore, pulWrappedKeyLen: CK_ULONG_PTR => out_len(pWrappedKey)) [];
            C_UnwrapKey(hSession: CK_SESSION_HANDLE => session, pMechanism: CK_MECHANISM_PTR => mechanism,
                hUnwrappingKey: CK_OBJECT_HANDLE => object2, pWrappedKey: CK_BYTE_PTR => ignore,
                ulWrappedKeyLen: CK_ULONG => in_len, pTemplate: CK_ATTRIBUTE_PTR => ignore,
                ulAttributeCount: CK_ULONG => template_in(pTemplate), phKey: CK_OBJECT_HANDLE_PTR => object_out) [];
            C_DeriveKey(hSession: CK_SESSION_HANDLE => session, pMechanism: CK_MECHANISM_PTR => mechanism,
                hBaseKey: CK_OBJECT_HANDLE => object2, pTemplate: CK_ATTRIBUTE_PTR => ignore,
                ulAttributeCount: CK_ULONG => template_in(pTemplate), phKey: CK_OBJECT_HANDLE_PTR => object_out) [];
            C_SeedRandom(hSession: CK_SESSION_HANDLE => session, pSeed: CK_BYTE_PTR => ignore,
                ulSeedLen: CK_ULONG => in_len) [];
            C_GenerateRandom(hSession: CK_SESSION_HANDLE => session, RandomData: CK_BYTE_PTR => ignore,
                ulRandomLen: CK_ULONG => out_size) [];
            C_GetFunctionStatus(hSession: CK_SESSION_HANDLE => session) [];
            C_CancelFunction(hSession: CK_SESSION_HANDLE => session) [];
            C_WaitForSlotEvent(flags: CK_FLAGS => flags, pSlot: CK_SLOT_ID_PTR => slot_out,
                pRserved: CK_VOID_PTR => ignore) [];
        }
        v3_0 {
            C_GetInterfaceList(pInterfacesList: CK_INTERFACE_PTR => ignore, pulCount: CK_ULONG_PTR => count_out) [];
            C_GetInterface(pInterfaceName: CK_UTF8CHAR_PTR => interface_name, pVersion: CK_VERSION_PTR => ignore,
                ppInterface: CK_INTERFACE_PTR_PTR => ignore, flags: CK_FLAGS => flags) [];
            C_LoginUser(hSession: CK_SESSION_HANDLE => session, userType: CK_USER_TYPE => user,
                pPin: CK_UTF8CHAR_PTR => secret, ulPinLen: CK_ULONG => in_len, pUsername: CK_UTF8CHAR_PTR => ignore,
                ulUsernameLen: CK_ULONG => ignore) [];
            C_SessionCancel(hSession: CK_SESSION_HANDLE => session, flags: CK_FLAGS => flags) [];
            C_MessageEncryptInit(hSession: CK_SESSION_HANDLE => session, pMechanism: CK_MECHANISM_PTR => mechanism,
                hKey: CK_OBJECT_HANDLE => object) [op MessageEncrypt Init];
            C_EncryptMessage(hSession: CK_SESSION_HANDLE => session, pParameter: CK_VOID_PTR => ignore,
                ulParameterLen: CK_ULONG => message_param(pParameter), pAssociatedData: CK_BYTE_PTR => ignore,
                ulAssociatedDataLen: CK_ULONG => aad_len, pPlaintext: CK_BYTE_PTR => ignore,
                ulPlaintextLen: CK_ULONG => in_len, pCiphertext: CK_BYTE_PTR => ignore,
                pulCiphertextLen: CK_ULONG_PTR => out_len(pCiphertext)) [op MessageEncrypt Message];
            C_EncryptMessageBegin(hSession: CK_SESSION_HANDLE => session, pParameter: CK_VOID_PTR => ignore,
                ulParameterLen: CK_ULONG => message_param(pParameter), pAssociatedData: CK_BYTE_PTR => ignore,
                ulAssociatedDataLen: CK_ULONG => aad_len) [op MessageEncrypt Message];
            C_EncryptMessageNext(hSession: CK_SESSION_HANDLE => session, pParameter: CK_VOID_PTR => ignore,
                ulParameterLen: CK_ULONG => message_param(pParameter), pPlaintextPart: CK_BYTE_PTR => ignore,
                ulPlaintextPartLen: CK_ULONG => in_len, pCiphertextPart: CK_BYTE_PTR => ignore,
                pulCiphertextPartLen: CK_ULONG_PTR => out_len(pCiphertextPart), flags: CK_FLAGS => flags) [op MessageEncrypt Message];
            C_MessageEncryptFinal(hSession: CK_SESSION_HANDLE => session) [op MessageEncrypt Final];
            C_MessageDecryptInit(hSession: CK_SESSION_HANDLE => session, pMechanism: CK_MECHANISM_PTR => mechanism,
                hKey: CK_OBJECT_HANDLE => object) [op MessageDecrypt Init];
            C_DecryptMessage(hSession: CK_SESSION_HANDLE => session, pParameter: CK_VOID_PTR => ignore,
                ulParameterLen: CK_ULONG => message_param(pParameter), pAssociatedData: CK_BYTE_PTR => ignore,
                ulAssociatedDataLen: CK_ULONG => aad_len, pCiphertext: CK_BYTE_PTR => ignore,
                ulCiphertextLen: CK_ULONG => in_len, pPlaintext: CK_BYTE_PTR => ignore,
                pulPlaintextLen: CK_ULONG_PTR => out_len(pPlaintext)) [op MessageDecrypt Message];
            C_DecryptMessageBegin(hSession: CK_SESSION_HANDLE => session, pParameter: CK_VOID_PTR => ignore,
                ulParameterLen: CK_ULONG => message_param(pParameter), pAssociatedData: CK_BYTE_PTR => ignore,
                ulAssociatedDataLen: CK_ULONG => aad_len) [op MessageDecrypt Message];
            C_DecryptMessageNext(hSession: CK_SESSION_HANDLE => session, pParameter: CK_VOID_PTR => ignore,
                ulParameterLen: CK_ULONG => message_param(pParameter), pCiphertextPart: CK_BYTE_PTR => ignore,
                ulCiphertextPartLen: CK_ULONG => in_len, pPlaintextPart: CK_BYTE_PTR => ignore,
                pulPlaintextPartLen: CK_ULONG_PTR => out_len(pPlaintextPart), flags: CK_FLAGS => flags) [op MessageDecrypt Message];
            C_MessageDecryptFinal(hSession: CK_SESSION_HANDLE => session) [op MessageDecrypt Final];
            C_MessageSignInit(hSession: CK_SESSION_HANDLE => session, pMechanism: CK_MECHANISM_PTR => mechanism,
                hKey: CK_OBJECT_HANDLE => object) [op MessageSign Init];
            C_SignMessage(hSession: CK_SESSION_HANDLE => session, pParameter: CK_VOID_PTR => ignore,
                ulParameterLen: CK_ULONG => message_param(pParameter), pData: CK_BYTE_PTR => ignore,
                ulDataLen: CK_ULONG => in_len, pSignature: CK_BYTE_PTR => ignore,
                pulSignatureLen: CK_ULONG_PTR => out_len(pSignature)) [op MessageSign Message];
            C_SignMessageBegin(hSession: CK_SESSION_HANDLE => session, pParameter: CK_VOID_PTR => ignore,
                ulParameterLen: CK_ULONG => message_param(pParameter)) [op MessageSign Message];
            C_SignMessageNext(hSession: CK_SESSION_HANDLE => session, pParameter: CK_VOID_PTR => ignore,
                ulParameterLen: CK_ULONG => message_param(pParameter), pData: CK_BYTE_PTR => ignore,
                ulDataLen: CK_ULONG => in_len, pSignature: CK_BYTE_PTR => ignore,
                pulSignatureLen: CK_ULONG_PTR => out_len(pSignature)) [op MessageSign Message];
            C_MessageSignFinal(hSession: CK_SESSION_HANDLE => session) [op MessageSign Final];
            C_MessageVerifyInit(hSession: CK_SESSION_HANDLE => session, pMechanism: CK_MECHANISM_PTR => mechanism,
                hKey: CK_OBJECT_HANDLE => object) [op MessageVerify Init];
            C_VerifyMessage(hSession: CK_SESSION_HANDLE => session, pParameter: CK_VOID_PTR => ignore,
                ulParameterLen: CK_ULONG => message_param(pParameter), pData: CK_BYTE_PTR => ignore,
                ulDataLen: CK_ULONG => in_len, pSignature: CK_BYTE_PTR => ignore,
                ulSignatureLen: CK_ULONG => signature_len) [op MessageVerify Message];
            C_VerifyMessageBegin(hSession: CK_SESSION_HANDLE => session, pParameter: CK_VOID_PTR => ignore,
                ulParameterLen: CK_ULONG => message_param(pParameter)) [op MessageVerify Message];
            C_VerifyMessageNext(hSession: CK_SESSION_HANDLE => session, pParameter: CK_VOID_PTR => ignore,
                ulParameterLen: CK_ULONG => message_param(pParameter), pData: CK_BYTE_PTR => ignore,
                ulDataLen: CK_ULONG => in_len, pSignature: CK_BYTE_PTR => ignore,
                ulSignatureLen: CK_ULONG => signature_len) [op MessageVerify Message];
            C_MessageVerifyFinal(hSession: CK_SESSION_HANDLE => session) [op MessageVerify Final];
        }
        v3_2 {
            C_EncapsulateKey(hSession: CK_SESSION_HANDLE => session, pMechanism: CK_MECHANISM_PTR => mechanism,
                hPublicKey: CK_OBJECT_HANDLE => object, pTemplate: CK_ATTRIBUTE_PTR => ignore,
                ulAttributeCount: CK_ULONG => template_in(pTemplate), pCiphertext: CK_BYTE_PTR => ignore,
                pulCiphertextLen: CK_ULONG_PTR => out_len(pCiphertext), phKey: CK_OBJECT_HANDLE_PTR => object_out) [];
            C_DecapsulateKey(hSession: CK_SESSION_HANDLE => session, pMechanism: CK_MECHANISM_PTR => mechanism,
                hPrivateKey: CK_OBJECT_HANDLE => object, pTemplate: CK_ATTRIBUTE_PTR => ignore,
                ulAttributeCount: CK_ULONG => template_in(pTemplate), pCiphertext: CK_BYTE_PTR => ignore,
                ulCiphertextLen: CK_ULONG => in_len, phKey: CK_OBJECT_HANDLE_PTR => object_out) [];
            C_VerifySignatureInit(hSession: CK_SESSION_HANDLE => session, pMechanism: CK_MECHANISM_PTR => mechanism,
                hKey: CK_OBJECT_HANDLE => object, pSignature: CK_BYTE_PTR => ignore,
                ulSignatureLen: CK_ULONG => signature_len) [op VerifySignature Init];
            C_VerifySignature(hSession: CK_SESSION_HANDLE => session, pData: CK_BYTE_PTR => ignore,
                ulDataLen: CK_ULONG => in_len) [op VerifySignature Single];
            C_VerifySignatureUpdate(hSession: CK_SESSION_HANDLE => session, pPart: CK_BYTE_PTR => ignore,
                ulPartLen: CK_ULONG => in_len) [op VerifySignature Update];
            C_VerifySignatureFinal(hSession: CK_SESSION_HANDLE => session) [op VerifySignature Final];
            C_GetSessionValidationFlags(hSession: CK_SESSION_HANDLE => session,
                type_: CK_SESSION_VALIDATION_FLAGS_TYPE => ignore, pFlags: CK_FLAGS_PTR => flags_out) [];
            C_AsyncComplete(hSession: CK_SESSION_HANDLE => session, pFunctionName: CK_UTF8CHAR_PTR => ignore,
                pResult: CK_ASYNC_DATA_PTR => ignore) [];
            C_AsyncGetID(hSession: CK_SESSION_HANDLE => session, pFunctionName: CK_UTF8CHAR_PTR => ignore,
                pulID: CK_ULONG_PTR => ignore) [];
            C_AsyncJoin(hSession: CK_SESSION_HANDLE => session, pFunctionName: CK_UTF8CHAR_PTR => ignore,
                ulID: CK_ULONG => ignore, pData: CK_BYTE_PTR => ignore, ulData: CK_ULONG => in_len) [];
            C_WrapKeyAuthenticated(hSession: CK_SESSION_HANDLE => session, pMechanism: CK_MECHANISM_PTR => mechanism,
                hWrappingKey: CK_OBJECT_HANDLE => object2, hKey: CK_OBJECT_HANDLE => object,
                pAssociatedData: CK_BYTE_PTR => ignore, ulAssociatedDataLen: CK_ULONG => aad_len,
                pWrappedKey: CK_BYTE_PTR => ignore, pulWrappedKeyLen: CK_ULONG_PTR => out_len(pWrappedKey)) [];
            C_UnwrapKeyAuthenticated(hSession: CK_SESSION_HANDLE => session, pMechanism: CK_MECHANISM_PTR => mechanism,
                hUnwrappingKey: CK_OBJECT_HANDLE => object2, pWrappedKey: CK_BYTE_PTR => ignore,
                ulWrappedKeyLen: CK_ULONG => in_len, pTemplate: CK_ATTRIBUTE_PTR => ignore,
                ulAttributeCount: CK_ULONG => template_in(pTemplate), pAssociatedData: CK_BYTE_PTR => ignore,
                ulAssociatedDataLen: CK_ULONG => aad_len, phKey: CK_OBJECT_HANDLE_PTR => object_out) [];
        }
        }
    };
}

/// The interface version that introduced a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Since {
    V2_40,
    V3_0,
    V3_2,
}

/// Which multi-part operation a call belongs to, and where in it (drives `op_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    Find,
    Encrypt,
    Decrypt,
    Digest,
    Sign,
    SignRecover,
    Verify,
    VerifyRecover,
    MessageEncrypt,
    MessageDecrypt,
    MessageSign,
    MessageVerify,
    VerifySignature,
}

/// Position of a call within its operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpStage {
    /// Starts the operation (`C_XInit`).
    Init,
    /// Continues it (`C_XUpdate`, `C_FindObjects`).
    Update,
    /// Ends it (`C_XFinal`).
    Final,
    /// Single-part call: ends the operation unless it only asked for a buffer size.
    Single,
    /// A message of the message-based API: the operation continues until `C_MessageXFinal`.
    Message,
}

/// Declares [`Role`] from the role identifiers of [`with_pkcs11_functions`] (`session` →
/// `Role::Session`), and `role!`, which the table expansion below maps each identifier through.
/// `macro_rules!` cannot deduplicate identifiers, so the list is written once here; the compiler
/// keeps it and the table equal both ways: a role the table uses but this list lacks has no
/// `role!` rule, and a variant no function uses fails the constant check after [`FUNCTIONS`].
macro_rules! define_roles {
    ($( $(#[$doc:meta])* $role:ident => $variant:ident, )*) => {
        /// The role of an argument: which `calls` column (or `attrs` entry) it fills, one variant
        /// per role identifier of [`with_pkcs11_functions`] (see `schemas/calls.md`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Role { $( $(#[$doc])* $variant, )* }

        impl Role {
            /// Every role, in declaration order.
            pub const ALL: &'static [Role] = &[ $( Role::$variant, )* ];

            /// The identifier the table spells the role with (`template_in`).
            pub const fn name(self) -> &'static str {
                match self { $( Role::$variant => stringify!($role), )* }
            }
        }

        macro_rules! role {
            $( ($role) => { Role::$variant }; )*
        }
    };
}

define_roles! {
    /// Not recorded (a buffer read through its length's role, an unused pointer).
    ignore => Ignore,
    /// A PIN: never read; only its length (an `in_len` argument) is recorded.
    secret => Secret,
    /// `C_Initialize`'s `CK_C_INITIALIZE_ARGS`: its `flags` → `ck_flags`.
    init_args => InitArgs,
    /// A session handle → `session`.
    session => Session,
    /// A session handle returned (`*phSession`) → `session`.
    session_out => SessionOut,
    /// A slot id → `slot_id`.
    slot => Slot,
    /// A slot id returned (`*pSlot`) → `slot_id`.
    slot_out => SlotOut,
    /// The object acted on → `object`.
    object => Object,
    /// The second key (wrapping, unwrapping, base key) → `object2`.
    object2 => Object2,
    /// A handle created (`*phObject`, `*phKey`) → appended to `out_objects`.
    object_out => ObjectOut,
    /// `C_FindObjects`' count of the handles found → `out_len`, the handles → `out_objects`.
    found_objects => FoundObjects,
    /// A `CKU_*` user type → `user_type`.
    user => User,
    /// A flags argument → `ck_flags`.
    flags => Flags,
    /// `C_GetSlotList`'s `tokenPresent` → `ck_flags`.
    token_present => TokenPresent,
    /// Flags returned (`*pFlags`) → `ck_flags`.
    flags_out => FlagsOut,
    /// A bare mechanism type → `mechanism`.
    mech_type => MechType,
    /// A `CK_MECHANISM`: its type → `mechanism`, its known parameters → `mech_params`.
    mechanism => Mechanism,
    /// The message API's parameter (its length) → `mech_params`.
    message_param => MessageParam,
    /// The length of associated data → `mech_params`.
    aad_len => AadLen,
    /// The length of the input buffer → `in_len`.
    in_len => InLen,
    /// The length of the output after the call (`*pulXLen`) → `out_len`.
    out_len => OutLen,
    /// A count returned (`*pulCount`) → `out_len`.
    count_out => CountOut,
    /// `C_GetObjectSize`'s size → `out_len`.
    size_out => SizeOut,
    /// The requested length of `C_GenerateRandom` → `out_len`.
    out_size => OutSize,
    /// The signature length handed to verify calls → `out_len`.
    signature_len => SignatureLen,
    /// A template the caller passes → `attrs` (`in`).
    template_in => TemplateIn,
    /// `C_GenerateKeyPair`'s public template → `attrs` (`public`).
    template_public => TemplatePublic,
    /// `C_GenerateKeyPair`'s private template → `attrs` (`private`).
    template_private => TemplatePrivate,
    /// `C_GetAttributeValue`'s results → `attrs` (`out`).
    template_out => TemplateOut,
    /// `C_InitToken`'s label → an `in` `CKA_LABEL` entry of `attrs`.
    token_label => TokenLabel,
    /// `C_GetInterface`'s interface name → an `in` `pInterfaceName` entry of `attrs`.
    interface_name => InterfaceName,
    /// `C_GetInfo`'s `CK_INFO` → info fields in `attrs`.
    info_out => InfoOut,
    /// `C_GetSlotInfo`'s `CK_SLOT_INFO` → info fields in `attrs`.
    slot_info_out => SlotInfoOut,
    /// `C_GetTokenInfo`'s `CK_TOKEN_INFO` → info fields in `attrs`.
    token_info_out => TokenInfoOut,
    /// `C_GetMechanismInfo`'s `CK_MECHANISM_INFO` → info fields in `attrs`.
    mech_info_out => MechInfoOut,
    /// `C_GetSessionInfo`'s `CK_SESSION_INFO`: its slot → `slot_id`.
    session_info_out => SessionInfoOut,
}

/// One argument of a function: its C name and the role it plays (see `schemas/calls.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgSpec {
    pub name: &'static str,
    pub role: Role,
    /// Other arguments the role reads (the template pointer of a `template_in` count, ...).
    pub extras: &'static [&'static str],
}

/// One PKCS#11 function as declared in [`with_pkcs11_functions`].
#[derive(Debug, Clone, Copy)]
pub struct FunctionSpec {
    pub func: Func,
    pub name: &'static str,
    pub since: Since,
    pub args: &'static [ArgSpec],
    pub op: Option<(OpKind, OpStage)>,
}

macro_rules! optional_op {
    () => {
        None
    };
    (op $kind:ident $stage:ident) => {
        Some((OpKind::$kind, OpStage::$stage))
    };
}

macro_rules! define_functions {
    ($( $group:ident { $(
        $name:ident ( $( $arg:ident : $ty:ty => $role:ident $( ( $($extra:ident),* ) )? ),* $(,)? )
            [ $($op:tt)* ] ;
    )* } )*) => {
        /// Every PKCS#11 function, numbered in 3.2 function-list order (the wire code).
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u16)]
        pub enum Func { $( $( $name, )* )* }

        /// The table of every function, indexed by `Func as usize`.
        pub static FUNCTIONS: &[FunctionSpec] = &[ $( $(
            FunctionSpec {
                func: Func::$name,
                name: stringify!($name),
                since: define_functions!(@since $group),
                args: &[ $( ArgSpec {
                    name: stringify!($arg),
                    role: role!($role),
                    extras: &[ $( $( stringify!($extra) ),* )? ],
                } ),* ],
                op: optional_op!($($op)*),
            },
        )* )* ];

        /// Every role the table uses (with repeats); checked against [`Role::ALL`] below.
        const USED_ROLES: &[Role] = &[ $( $( $( role!($role), )* )* )* ];
    };
    (@since v2_40) => { Since::V2_40 };
    (@since v3_0) => { Since::V3_0 };
    (@since v3_2) => { Since::V3_2 };
}

with_pkcs11_functions!(define_functions);

// Every declared role is used by some function (the other direction is `role!` itself).
const _: () = {
    let mut i = 0;
    while i < Role::ALL.len() {
        let mut j = 0;
        while j < USED_ROLES.len() && USED_ROLES[j] as u8 != Role::ALL[i] as u8 {
            j += 1;
        }
        assert!(
            j < USED_ROLES.len(),
            "a Role variant is used by no function of the table"
        );
        i += 1;
    }
};

impl Func {
    /// The function with wire code `code`, if any.
    pub fn from_code(code: u16) -> Option<Func> {
        FUNCTIONS.get(usize::from(code)).map(|spec| spec.func)
    }

    /// The function named `name` (`C_Sign`); also accepts the name without `C_`, as old
    /// pkcs11-spy versions print `SetOperationState`.
    pub fn from_name(name: &str) -> Option<Func> {
        let name = name.strip_prefix("C_").unwrap_or(name);
        FUNCTIONS
            .iter()
            .find(|spec| &spec.name[2..] == name)
            .map(|spec| spec.func)
    }

    pub fn code(self) -> u16 {
        self as u16
    }

    pub fn spec(self) -> &'static FunctionSpec {
        &FUNCTIONS[self as usize]
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_every_function_of_each_version_in_list_order() {
        let count = |since| FUNCTIONS.iter().filter(|f| f.since == since).count();
        assert_eq!(count(Since::V2_40), 68);
        assert_eq!(count(Since::V3_0), 24);
        assert_eq!(count(Since::V3_2), 12);
        for (index, spec) in FUNCTIONS.iter().enumerate() {
            assert_eq!(spec.func as usize, index, "{}", spec.name);
        }
        assert_eq!(Func::C_Initialize.code(), 0);
        assert_eq!(Func::C_WaitForSlotEvent.code(), 67);
        assert_eq!(Func::C_GetInterfaceList.code(), 68);
        assert_eq!(Func::C_UnwrapKeyAuthenticated.code(), 103);
    }

    #[test]
    fn names_round_trip_and_accept_the_spy_spelling() {
        for spec in FUNCTIONS {
            assert_eq!(Func::from_name(spec.name), Some(spec.func));
            assert_eq!(Func::from_code(spec.func.code()), Some(spec.func));
        }
        assert_eq!(
            Func::from_name("SetOperationState"),
            Some(Func::C_SetOperationState)
        );
        assert_eq!(Func::from_name("C_Nope"), None);
        assert_eq!(Func::from_code(104), None);
    }

    #[test]
    fn roles_carry_the_identifiers_of_the_table() {
        assert_eq!(Func::C_Sign.spec().args[0].role, Role::Session);
        assert_eq!(Role::TemplateIn.name(), "template_in");
        let count = |role| {
            FUNCTIONS
                .iter()
                .flat_map(|f| f.args)
                .filter(|a| a.role == role)
                .count()
        };
        assert_eq!(count(Role::TemplatePublic), 1);
        for (index, role) in Role::ALL.iter().enumerate() {
            assert_eq!(*role as usize, index);
            assert!(count(*role) > 0, "{}", role.name());
        }
    }

    #[test]
    fn every_extra_argument_named_by_a_role_exists() {
        // template_in(pTemplate) etc. must name a real argument of the same function.
        macro_rules! check_extras {
            ($( $group:ident { $(
                $name:ident ( $( $arg:ident : $ty:ty => $role:ident $( ( $($extra:ident),* ) )? ),* $(,)? )
                    [ $($op:tt)* ] ;
            )* } )*) => {
                $( $( {
                    let args: &[&str] = &[ $( stringify!($arg) ),* ];
                    let _ = args;
                    $( $( $( assert!(args.contains(&stringify!($extra)), "{}: {}", stringify!($name), stringify!($extra)); )* )? )*
                } )* )*
            };
        }
        with_pkcs11_functions!(check_extras);
    }
}
