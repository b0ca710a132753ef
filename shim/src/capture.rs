//! The call being recorded ([`Call`]), and reading arguments out of caller memory into it:
//! templates (through the allowlist), mechanism parameters (non-secret fields of known structures)
//! and info structures.
//!
//! Nothing here reads a byte the allowlist does not name: secret attributes, PINs, data buffers
//! and secret parameter fields keep only their lengths.

use p11trace_ffi::*;
use p11trace_record::attr::{Attr, AttrType, AttrValue, Template};
use p11trace_record::names;
use p11trace_record::params::{MechParams, takes_bare_iv};
use p11trace_record::policy::{MAX_VALUE_LEN, ValuePolicy, value_policy};

use crate::queued::{self, Extra, Pending, Pool, Rec};

/// A call being recorded: the record plus facts roles need to share.
pub struct Call {
    pub rec: Rec,
    /// Where [`Call::extra`] takes its box from.
    pub pool: &'static Pool,
    /// An output buffer pointer was null: the call only asked for a size.
    pub size_query: bool,
    /// `C_Initialize` flags (`CKF_LIBRARY_CANT_CREATE_OS_THREADS`, ...).
    pub init_flags: CK_FLAGS,
    /// `C_GetAttributeValue`: the caller's value buffers as they were before the call, so the
    /// values read after it never go past what the caller allocated, whatever the module wrote.
    pub caller_buffers: Vec<CallerBuffer>,
}

impl Call {
    /// The record's variable-size parts (templates, info fields, handles, parameters), taken
    /// from the pool on first use.
    pub fn extra(&mut self) -> &mut Extra {
        self.rec
            .extra
            .get_or_insert_with(|| queued::take(self.pool))
    }

    /// Appends finished attributes (info fields, labels) to `attrs`.
    pub fn push_attrs(&mut self, attrs: impl IntoIterator<Item = Attr>) {
        self.extra()
            .attrs()
            .extend(attrs.into_iter().map(Pending::Attr));
    }
}

/// One attribute's output buffer as the caller passed it: `pValue` and `ulValueLen`.
#[derive(Clone, Copy)]
pub struct CallerBuffer {
    pub value: *const u8,
    pub len: CK_ULONG,
}

/// Most attributes read from one template (a bound on work for absurd counts).
pub const MAX_TEMPLATE_ATTRS: usize = 256;

/// `ulValueLen` as recorded: -1 for `CK_UNAVAILABLE_INFORMATION`; a length past `i64::MAX`
/// (only a broken module writes one) saturates.
fn recorded_len(len: CK_ULONG) -> i64 {
    if len == CK_UNAVAILABLE_INFORMATION {
        -1
    } else {
        i64::try_from(len).unwrap_or(i64::MAX)
    }
}

/// The caller's output buffers of a `C_GetAttributeValue` template, taken before the call.
///
/// # Safety
/// `template` must be null or point to `count` attributes, as the PKCS#11 call requires.
pub unsafe fn caller_buffers(template: CK_ATTRIBUTE_PTR, count: CK_ULONG) -> Vec<CallerBuffer> {
    if template.is_null() {
        return Vec::new();
    }
    let count = usize::try_from(count).map_or(MAX_TEMPLATE_ATTRS, |c| c.min(MAX_TEMPLATE_ATTRS));
    // SAFETY: the caller passed `count` attributes.
    let attributes = unsafe { std::slice::from_raw_parts(template, count) };
    attributes
        .iter()
        .map(|attribute| CallerBuffer {
            value: attribute.pValue.cast_const().cast(),
            len: attribute.ulValueLen,
        })
        .collect()
}

/// Reads one attribute value through the allowlist: `Err` with the value when nothing may or can
/// be read, else the allowlisted bytes (turned into a value by `value_from_bytes` on the sender).
///
/// # Safety
/// `value` must be null or point to `len` readable bytes.
unsafe fn read_value<'a>(
    attribute: u64,
    value: *const u8,
    len: CK_ULONG,
) -> Result<&'a [u8], AttrValue> {
    if matches!(value_policy(attribute), ValuePolicy::Redact) {
        return Err(AttrValue::Redacted);
    }
    if value.is_null()
        || len == 0
        || len == CK_UNAVAILABLE_INFORMATION
        || len as usize > MAX_VALUE_LEN
    {
        return Err(AttrValue::None);
    }
    // SAFETY: non-null, and the caller guarantees `len` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(value, len as usize) })
}

/// Where an attribute's value is read from, and how many bytes at most.
///
/// An input is the caller's own (`pValue`, `ulValueLen`). An output (`caller` = the buffers taken
/// before the call) is read from the buffer the caller passed, clamped to the size the caller
/// gave it: a module that reports a longer `ulValueLen` than the buffer holds (or moves `pValue`)
/// never makes the shim read past the caller's allocation. The recorded length is clamped alike
/// (only a size query, a null `pValue`, records the module's length as it is).
fn value_source(
    attribute: &CK_ATTRIBUTE,
    index: usize,
    caller: Option<&[CallerBuffer]>,
) -> (*const u8, CK_ULONG) {
    let Some(caller) = caller else {
        return (attribute.pValue.cast_const().cast(), attribute.ulValueLen);
    };
    let Some(buffer) = caller.get(index) else {
        return (std::ptr::null(), attribute.ulValueLen);
    };
    let written = attribute.ulValueLen;
    if buffer.value.is_null() || written == CK_UNAVAILABLE_INFORMATION {
        return (std::ptr::null(), written);
    }
    (buffer.value, written.min(buffer.len))
}

/// Captures a template into `call`'s `attrs`. Before the call (`rv == None`, `caller == None`) values are inputs; after
/// it (`C_GetAttributeValue`) they are outputs, read only where the call filled them and only
/// within the caller's buffers (`caller`, see [`caller_buffers`]).
///
/// # Safety
/// `template` must be null or point to `count` attributes, as the PKCS#11 call requires; each
/// `caller` buffer must hold its `len` bytes.
pub unsafe fn template(
    call: &mut Call,
    which: Template,
    template: CK_ATTRIBUTE_PTR,
    count: CK_ULONG,
    rv: Option<CK_RV>,
    caller: Option<&[CallerBuffer]>,
) {
    let extra = call.extra();
    extra.attrs();
    if template.is_null() {
        return;
    }
    let filled = match rv {
        None => true,
        Some(rv) => matches!(
            rv,
            CKR_OK | CKR_ATTRIBUTE_SENSITIVE | CKR_ATTRIBUTE_TYPE_INVALID | CKR_BUFFER_TOO_SMALL
        ),
    };
    let count = usize::try_from(count).map_or(MAX_TEMPLATE_ATTRS, |c| c.min(MAX_TEMPLATE_ATTRS));
    // SAFETY: the caller passed `count` attributes.
    let attributes = unsafe { std::slice::from_raw_parts(template, count) };
    for (index, attribute) in attributes.iter().enumerate() {
        let kind = attribute.type_ as u64;
        let (source, len) = value_source(attribute, index, caller);
        let read = if filled {
            // SAFETY: an input's pValue holds ulValueLen bytes; an output is read from the
            // caller's buffer, at most the caller's size of it.
            unsafe { read_value(kind, source, len) }
        } else {
            Err(match value_policy(kind) {
                ValuePolicy::Redact => AttrValue::Redacted,
                _ => AttrValue::None,
            })
        };
        match read {
            Ok(bytes) => extra.push_raw(which, kind, recorded_len(len), bytes),
            Err(value) => extra.attrs().push(Pending::Attr(Attr {
                template: which,
                kind: AttrType::Attribute(kind),
                len: recorded_len(len),
                value,
            })),
        }
    }
}

pub use p11trace_record::attr::info_field as field;
pub use p11trace_record::policy::fixed_text_of as fixed_text;

pub fn version(v: CK_VERSION) -> AttrValue {
    AttrValue::Version(v.major, v.minor)
}

/// Reads a `T` parameter structure if the caller passed exactly one.
///
/// # Safety
/// `parameter` must be null or point to `len` readable bytes.
unsafe fn parameter<T: Copy>(parameter: CK_VOID_PTR, len: CK_ULONG) -> Option<T> {
    if parameter.is_null() || len as usize != size_of::<T>() {
        return None;
    }
    // SAFETY: non-null and exactly size_of::<T>() bytes; read unaligned as callers may pack.
    Some(unsafe { std::ptr::read_unaligned(parameter.cast::<T>()) })
}

/// The non-secret fields of a mechanism's parameter (`mech_params`), written into `out` (a
/// default value: in place in the record's box, not copied there).
///
/// # Safety
/// `mechanism.pParameter` must be null or point to `ulParameterLen` readable bytes.
pub unsafe fn mechanism_params(mechanism: &CK_MECHANISM, out: &mut MechParams) {
    let (p, len) = (mechanism.pParameter, mechanism.ulParameterLen);
    let code = mechanism.mechanism as u64;
    match mechanism.mechanism {
        CKM_RSA_PKCS_OAEP => {
            // SAFETY: this function's contract, forwarded.
            if let Some(params) = unsafe { parameter::<CK_RSA_PKCS_OAEP_PARAMS>(p, len) } {
                out.hash = Some(params.hashAlg as u64);
                out.mgf = Some(params.mgf as u64);
                out.source = Some(params.source as u64);
                out.source_len = Some(params.ulSourceDataLen as u64);
                return;
            }
        }
        // The name lookup (a search of the mechanism table) only for a parameter of the PSS
        // structure's size: any other falls through to the same `param_len` as before.
        _ if len as usize == size_of::<CK_RSA_PKCS_PSS_PARAMS>()
            && names::MECHANISM
                .name(code)
                .is_some_and(|name| name.ends_with("_PSS")) =>
        {
            // SAFETY: this function's contract, forwarded.
            if let Some(params) = unsafe { parameter::<CK_RSA_PKCS_PSS_PARAMS>(p, len) } {
                out.hash = Some(params.hashAlg as u64);
                out.mgf = Some(params.mgf as u64);
                out.salt_len = Some(params.sLen as u64);
                return;
            }
        }
        CKM_AES_GCM => {
            // SAFETY: this function's contract, forwarded.
            if let Some(params) = unsafe { parameter::<CK_GCM_PARAMS>(p, len) } {
                out.iv_len = Some(params.ulIvLen as u64);
                out.aad_len = Some(params.ulAADLen as u64);
                out.tag_bits = Some(params.ulTagBits as u64);
                return;
            }
        }
        CKM_AES_CCM => {
            // SAFETY: this function's contract, forwarded.
            if let Some(params) = unsafe { parameter::<CK_CCM_PARAMS>(p, len) } {
                out.data_len = Some(params.ulDataLen as u64);
                out.nonce_len = Some(params.ulNonceLen as u64);
                out.aad_len = Some(params.ulAADLen as u64);
                out.mac_len = Some(params.ulMACLen as u64);
                return;
            }
        }
        CKM_AES_CTR => {
            // SAFETY: this function's contract, forwarded.
            if let Some(params) = unsafe { parameter::<CK_AES_CTR_PARAMS>(p, len) } {
                out.counter_bits = Some(params.ulCounterBits as u64);
                return;
            }
        }
        CKM_ECDH1_DERIVE | CKM_ECDH1_COFACTOR_DERIVE => {
            // SAFETY: this function's contract, forwarded.
            if let Some(params) = unsafe { parameter::<CK_ECDH1_DERIVE_PARAMS>(p, len) } {
                out.kdf = Some(params.kdf as u64);
                out.shared_data_len = Some(params.ulSharedDataLen as u64);
                out.public_data_len = Some(params.ulPublicDataLen as u64);
                return;
            }
        }
        CKM_PKCS5_PBKD2 => {
            // PARAMS and PARAMS2 share this prefix; the password is never read.
            // SAFETY: this function's contract, forwarded.
            if let Some(params) = unsafe { parameter::<CK_PKCS5_PBKD2_PARAMS2>(p, len) } {
                out.iterations = Some(params.iterations as u64);
                out.prf = Some(params.prf as u64);
                return;
            }
        }
        CKM_EDDSA => {
            // SAFETY: this function's contract, forwarded.
            if let Some(params) = unsafe { parameter::<CK_EDDSA_PARAMS>(p, len) } {
                out.prehash = Some(params.phFlag != 0);
                out.context_len = Some(params.ulContextDataLen as u64);
                return;
            }
        }
        _ if takes_bare_iv(code) => {
            out.iv_len = Some(len as u64);
            return;
        }
        _ => {}
    }
    out.param_len = Some(len as u64);
}
