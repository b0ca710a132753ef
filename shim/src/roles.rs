//! Argument roles: what each argument of the function table contributes to the call record.
//!
//! Every role named in `p11trace_record::with_pkcs11_functions!` is a module here with a
//! `before` (inputs, read before the real call) and an `after` (outputs, read once it returned).
//! The meaning of each role per column is documented in `schemas/calls.md`.
//!
//! # Safety
//! All functions take the caller's raw arguments. They read only what the PKCS#11 contract lets
//! the module read: input pointers before the call, output pointers after a call whose return
//! value says they were written. Callers (the generated wrappers) pass arguments unchanged.

#![allow(clippy::missing_safety_doc)]

use p11trace_ffi::*;
use p11trace_record::attr::InfoField;
use p11trace_record::attr::{Attr, AttrValue, Template};

use crate::capture::{self, Call, field, fixed_text, version};
use crate::queued::Col;

fn push_attrs(call: &mut Call, attrs: impl IntoIterator<Item = Attr>) {
    call.push_attrs(attrs);
}

/// Output values are meaningful after success, and sizes also after `CKR_BUFFER_TOO_SMALL`.
fn wrote_size(rv: CK_RV) -> bool {
    rv == CKR_OK || rv == CKR_BUFFER_TOO_SMALL
}

/// Roles that copy one scalar input into one column before the call.
macro_rules! scalar_role {
    ($($role:ident: $ty:ty => |$call:ident, $v:ident| $body:expr;)*) => {$(
        pub mod $role {
            use super::*;
            #[inline(always)]
            pub unsafe fn before($call: &mut Call, $v: $ty) {
                $body;
            }
            #[inline(always)]
            pub unsafe fn after(_: &mut Call, _: CK_RV, _: $ty) {}
        }
    )*};
}

scalar_role! {
    session: CK_SESSION_HANDLE => |call, v| call.rec.set(Col::Session, v as u64);
    slot: CK_SLOT_ID => |call, v| call.rec.set(Col::SlotId, v as u64);
    object: CK_OBJECT_HANDLE => |call, v| call.rec.set(Col::Object, v as u64);
    object2: CK_OBJECT_HANDLE => |call, v| call.extra().object2 = Some(v as u64);
    user: CK_USER_TYPE => |call, v| call.extra().user_type = Some(v as u64);
    flags: CK_FLAGS => |call, v| call.rec.set(Col::CkFlags, v as u64);
    token_present: CK_BBOOL => |call, v| call.rec.set(Col::CkFlags, u64::from(v));
    mech_type: CK_MECHANISM_TYPE => |call, v| call.rec.set(Col::Mechanism, v as u64);
    in_len: CK_ULONG => |call, v| call.rec.set_signed(Col::InLen, v as i64);
    // The caller-chosen size of an output (C_GenerateRandom), or the length of a signature handed
    // to a verify call: both are recorded as out_len.
    out_size: CK_ULONG => |call, v| call.rec.set_signed(Col::OutLen, v as i64);
    signature_len: CK_ULONG => |call, v| call.rec.set_signed(Col::OutLen, v as i64);
}

/// An argument the record does not use.
pub mod ignore {
    use super::*;
    #[inline(always)]
    pub unsafe fn before<T>(_: &mut Call, _: T) {}
    #[inline(always)]
    pub unsafe fn after<T>(_: &mut Call, _: CK_RV, _: T) {}
}

/// A PIN: never read, never copied. Its length comes from the `in_len` role.
pub mod secret {
    pub use super::ignore::{after, before};
}

pub mod init_args {
    use super::*;
    pub unsafe fn before(call: &mut Call, args: CK_VOID_PTR) {
        if !args.is_null() {
            // SAFETY: a non-null pInitArgs points to CK_C_INITIALIZE_ARGS.
            let flags = unsafe { (*args.cast::<CK_C_INITIALIZE_ARGS>()).flags };
            call.rec.set(Col::CkFlags, flags as u64);
            call.init_flags = flags;
        }
    }
    pub unsafe fn after(_: &mut Call, _: CK_RV, _: CK_VOID_PTR) {}
}

pub mod count_out {
    use super::*;
    pub unsafe fn before(_: &mut Call, _: CK_ULONG_PTR) {}
    pub unsafe fn after(call: &mut Call, rv: CK_RV, count: CK_ULONG_PTR) {
        if wrote_size(rv) && !count.is_null() {
            // SAFETY: the module wrote the count.
            call.rec.set_signed(Col::OutLen, unsafe { *count } as i64);
        }
    }
}

pub mod size_out {
    pub use super::count_out::{after, before};
}

/// `*pulXLen` of an output buffer `buffer`; a null buffer marks a size query.
pub mod out_len {
    use super::*;
    pub unsafe fn before<B>(call: &mut Call, _: CK_ULONG_PTR, buffer: *mut B) {
        call.size_query = buffer.is_null();
    }
    pub unsafe fn after<B>(call: &mut Call, rv: CK_RV, len: CK_ULONG_PTR, _: *mut B) {
        // SAFETY: same contract as count_out.
        unsafe { count_out::after(call, rv, len) }
    }
}

pub mod session_out {
    use super::*;
    pub unsafe fn before(_: &mut Call, _: CK_SESSION_HANDLE_PTR) {}
    pub unsafe fn after(call: &mut Call, rv: CK_RV, session: CK_SESSION_HANDLE_PTR) {
        if rv == CKR_OK && !session.is_null() {
            // SAFETY: written by a successful C_OpenSession.
            call.rec.set(Col::Session, unsafe { *session } as u64);
        }
    }
}

pub mod slot_out {
    use super::*;
    pub unsafe fn before(_: &mut Call, _: CK_SLOT_ID_PTR) {}
    pub unsafe fn after(call: &mut Call, rv: CK_RV, slot: CK_SLOT_ID_PTR) {
        if rv == CKR_OK && !slot.is_null() {
            // SAFETY: written by a successful C_WaitForSlotEvent.
            call.rec.set(Col::SlotId, unsafe { *slot } as u64);
        }
    }
}

pub mod flags_out {
    use super::*;
    pub unsafe fn before(_: &mut Call, _: CK_FLAGS_PTR) {}
    pub unsafe fn after(call: &mut Call, rv: CK_RV, flags: CK_FLAGS_PTR) {
        if rv == CKR_OK && !flags.is_null() {
            // SAFETY: written by a successful call.
            call.rec.set(Col::CkFlags, unsafe { *flags } as u64);
        }
    }
}

pub mod object_out {
    use super::*;
    pub unsafe fn before(call: &mut Call, _: CK_OBJECT_HANDLE_PTR) {
        call.extra().out_objects();
    }
    pub unsafe fn after(call: &mut Call, rv: CK_RV, object: CK_OBJECT_HANDLE_PTR) {
        if rv == CKR_OK && !object.is_null() {
            // SAFETY: written by a successful object-creating call.
            let handle = unsafe { *object } as u64;
            call.extra().out_objects().push(handle);
        }
    }
}

/// `C_FindObjects`: the handles found (`*pulObjectCount` of them in `phObject`, which holds
/// `ulMaxObjectCount`).
pub mod found_objects {
    use super::*;
    /// Most handles recorded per `C_FindObjects` call; `out_len` keeps the count.
    const MAX_FOUND: usize = 4096;
    pub unsafe fn before(call: &mut Call, _: CK_ULONG_PTR, _: CK_OBJECT_HANDLE_PTR, _: CK_ULONG) {
        call.extra().out_objects();
    }
    /// The count is clamped to `ulMaxObjectCount`, the caller's array: a module that reports
    /// more never makes the shim read past it (nor record handles it could not have written).
    pub unsafe fn after(
        call: &mut Call,
        rv: CK_RV,
        count: CK_ULONG_PTR,
        objects: CK_OBJECT_HANDLE_PTR,
        max: CK_ULONG,
    ) {
        if rv != CKR_OK || count.is_null() {
            return;
        }
        // SAFETY: a successful C_FindObjects wrote the count.
        let found = unsafe { *count }.min(max);
        call.rec
            .set_signed(Col::OutLen, i64::try_from(found).unwrap_or(i64::MAX));
        if !objects.is_null() {
            let readable = usize::try_from(found).map_or(MAX_FOUND, |n| n.min(MAX_FOUND));
            // SAFETY: phObject holds ulMaxObjectCount handles, and `readable` is no more; a
            // successful call wrote the first `found` of them.
            let handles = unsafe { std::slice::from_raw_parts(objects, readable) };
            call.extra()
                .out_objects()
                .extend(handles.iter().map(|&h| h as u64));
        }
    }
}

pub mod mechanism {
    use super::*;
    pub unsafe fn before(call: &mut Call, mechanism: CK_MECHANISM_PTR) {
        if mechanism.is_null() {
            return;
        }
        // SAFETY: a non-null pMechanism points to a CK_MECHANISM.
        let mechanism = unsafe { &*mechanism };
        call.rec.set(Col::Mechanism, mechanism.mechanism as u64);
        // SAFETY: pParameter holds ulParameterLen bytes.
        unsafe { capture::mechanism_params(mechanism, call.extra().new_params()) };
    }
    pub unsafe fn after(_: &mut Call, _: CK_RV, _: CK_MECHANISM_PTR) {}
}

/// Parameter of a message-API call: its length (the structure depends on the operation).
pub mod message_param {
    use super::*;
    pub unsafe fn before(call: &mut Call, len: CK_ULONG, _: CK_VOID_PTR) {
        call.extra().params().param_len = Some(len as u64);
    }
    pub unsafe fn after(_: &mut Call, _: CK_RV, _: CK_ULONG, _: CK_VOID_PTR) {}
}

/// Length of additional authenticated data, appended to `mech_params`.
pub mod aad_len {
    use super::*;
    pub unsafe fn before(call: &mut Call, len: CK_ULONG) {
        call.extra().params().aad_len = Some(len as u64);
    }
    pub unsafe fn after(_: &mut Call, _: CK_RV, _: CK_ULONG) {}
}

macro_rules! template_role {
    ($($role:ident: $template:expr, $when:ident;)*) => {$(
        pub mod $role {
            use super::*;
            pub unsafe fn before(call: &mut Call, count: CK_ULONG, template: CK_ATTRIBUTE_PTR) {
                if template_role!(@is_before $when) {
                    // SAFETY: pTemplate holds ulCount attributes.
                    unsafe { capture::template(call, $template, template, count, None, None) };
                } else {
                    // SAFETY: as above; the buffers the module may fill, as the caller sized them.
                    call.caller_buffers = unsafe { capture::caller_buffers(template, count) };
                }
            }
            pub unsafe fn after(call: &mut Call, rv: CK_RV, count: CK_ULONG, template: CK_ATTRIBUTE_PTR) {
                if !template_role!(@is_before $when) {
                    let caller = std::mem::take(&mut call.caller_buffers);
                    // SAFETY: the module filled the template as far as rv says; values are read
                    // only within the caller's buffers, taken before the call.
                    unsafe {
                        capture::template(call, $template, template, count, Some(rv), Some(&caller))
                    };
                }
            }
        }
    )*};
    (@is_before before) => { true };
    (@is_before after) => { false };
}

template_role! {
    template_in: Template::In, before;
    template_public: Template::Public, before;
    template_private: Template::Private, before;
    template_out: Template::Out, after;
}

/// `C_InitToken`'s 32-byte, blank-padded label.
pub mod token_label {
    use super::*;
    pub unsafe fn before(call: &mut Call, label: CK_UTF8CHAR_PTR) {
        if label.is_null() {
            return;
        }
        // SAFETY: pLabel points to 32 bytes.
        let bytes = unsafe { std::slice::from_raw_parts(label, 32) };
        let text = fixed_text(bytes);
        let attr = Attr {
            template: Template::In,
            kind: p11trace_record::attr::AttrType::Attribute(CKA_LABEL as u64),
            len: 32,
            value: AttrValue::Text(text),
        };
        push_attrs(call, [attr]);
    }
    pub unsafe fn after(_: &mut Call, _: CK_RV, _: CK_UTF8CHAR_PTR) {}
}

/// `C_GetInterface`'s interface name (a C string, or null for the default).
pub mod interface_name {
    use super::*;
    pub unsafe fn before(call: &mut Call, name: CK_UTF8CHAR_PTR) {
        if name.is_null() {
            return;
        }
        // SAFETY: a non-null pInterfaceName is a NUL-terminated string.
        let name = unsafe { std::ffi::CStr::from_ptr(name.cast()) };
        let text =
            String::from_utf8_lossy(&name.to_bytes()[..name.to_bytes().len().min(64)]).into_owned();
        push_attrs(
            call,
            [Attr {
                template: Template::In,
                ..field(InfoField::InterfaceName, AttrValue::Text(text))
            }],
        );
    }
    // The tables hold entry.rs's own C_GetInterface (no generated wrapper), which calls only
    // `before`.
    #[allow(dead_code)]
    pub unsafe fn after(_: &mut Call, _: CK_RV, _: CK_UTF8CHAR_PTR) {}
}

macro_rules! info_role {
    ($($role:ident: $info:ty => |$i:ident| $fields:expr;)*) => {$(
        pub mod $role {
            use super::*;
            pub unsafe fn before(_: &mut Call, _: *mut $info) {}
            pub unsafe fn after(call: &mut Call, rv: CK_RV, info: *mut $info) {
                if rv == CKR_OK && !info.is_null() {
                    // SAFETY: a successful call filled the structure.
                    let $i = unsafe { &*info };
                    push_attrs(call, $fields);
                }
            }
        }
    )*};
}

info_role! {
    info_out: CK_INFO => |i| [
        field(InfoField::CryptokiVersion, version(i.cryptokiVersion)),
        field(InfoField::ManufacturerId, AttrValue::Text(fixed_text(&i.manufacturerID))),
        field(InfoField::Flags, AttrValue::Ulong(i.flags as u64)),
        field(InfoField::LibraryDescription, AttrValue::Text(fixed_text(&i.libraryDescription))),
        field(InfoField::LibraryVersion, version(i.libraryVersion)),
    ];
    slot_info_out: CK_SLOT_INFO => |i| [
        field(InfoField::SlotDescription, AttrValue::Text(fixed_text(&i.slotDescription))),
        field(InfoField::ManufacturerId, AttrValue::Text(fixed_text(&i.manufacturerID))),
        field(InfoField::Flags, AttrValue::Ulong(i.flags as u64)),
        field(InfoField::HardwareVersion, version(i.hardwareVersion)),
        field(InfoField::FirmwareVersion, version(i.firmwareVersion)),
    ];
    token_info_out: CK_TOKEN_INFO => |i| [
        field(InfoField::Label, AttrValue::Text(fixed_text(&i.label))),
        field(InfoField::ManufacturerId, AttrValue::Text(fixed_text(&i.manufacturerID))),
        field(InfoField::Model, AttrValue::Text(fixed_text(&i.model))),
        field(InfoField::SerialNumber, AttrValue::Text(fixed_text(&i.serialNumber))),
        field(InfoField::Flags, AttrValue::Ulong(i.flags as u64)),
        field(InfoField::HardwareVersion, version(i.hardwareVersion)),
        field(InfoField::FirmwareVersion, version(i.firmwareVersion)),
    ];
    mech_info_out: CK_MECHANISM_INFO => |i| [
        field(InfoField::MinKeySize, AttrValue::Ulong(i.ulMinKeySize as u64)),
        field(InfoField::MaxKeySize, AttrValue::Ulong(i.ulMaxKeySize as u64)),
        field(InfoField::Flags, AttrValue::Ulong(i.flags as u64)),
    ];
}

/// `C_GetSessionInfo`: only the slot, so the hottest call in most workloads never allocates.
pub mod session_info_out {
    use super::*;
    pub unsafe fn before(_: &mut Call, _: CK_SESSION_INFO_PTR) {}
    pub unsafe fn after(call: &mut Call, rv: CK_RV, info: CK_SESSION_INFO_PTR) {
        if rv == CKR_OK && !info.is_null() {
            // SAFETY: a successful call filled the structure.
            call.rec.set(Col::SlotId, unsafe { (*info).slotID } as u64);
        }
    }
}
