//! Reading arguments out of caller memory: templates (through the allowlist), mechanism
//! parameters (non-secret fields of known structures) and info structures.
//!
//! Nothing here reads a byte the allowlist does not name: secret attributes, PINs, data buffers
//! and secret parameter fields keep only their lengths.

use std::fmt::Write as _;

use p11trace_schema::attrs::{InfoField, MAX_VALUE_LEN, ValuePolicy, value_policy};
use p11trace_schema::names;
use p11trace_schema::wire::{Attr, AttrType, AttrValue, Template};

use crate::ffi::*;

/// Most attributes read from one template (a bound on work for absurd counts).
pub const MAX_TEMPLATE_ATTRS: usize = 256;

/// `ulValueLen` as recorded: -1 for `CK_UNAVAILABLE_INFORMATION`.
fn recorded_len(len: CK_ULONG) -> i64 {
    if len == CK_UNAVAILABLE_INFORMATION {
        -1
    } else {
        len as i64
    }
}

/// Reads one attribute value under `policy`.
///
/// # Safety
/// `value` must be null or point to `len` readable bytes.
unsafe fn read_value(policy: ValuePolicy, value: *const u8, len: CK_ULONG) -> AttrValue {
    if matches!(policy, ValuePolicy::Redact) {
        return AttrValue::Redacted;
    }
    if value.is_null() || len == CK_UNAVAILABLE_INFORMATION || len as usize > MAX_VALUE_LEN {
        return AttrValue::None;
    }
    // SAFETY: non-null, and the caller guarantees `len` readable bytes.
    let bytes = unsafe { std::slice::from_raw_parts(value, len as usize) };
    match policy {
        ValuePolicy::Redact => AttrValue::Redacted,
        ValuePolicy::Bool if bytes.len() == 1 => AttrValue::Bool(bytes[0] != 0),
        ValuePolicy::Number | ValuePolicy::Named(_) if bytes.len() == size_of::<CK_ULONG>() => {
            let mut word = [0u8; size_of::<CK_ULONG>()];
            word.copy_from_slice(bytes);
            AttrValue::Ulong(CK_ULONG::from_ne_bytes(word) as u64)
        }
        ValuePolicy::Label => AttrValue::Text(String::from_utf8_lossy(bytes).into_owned()),
        ValuePolicy::Identifier
        | ValuePolicy::PublicBytes
        | ValuePolicy::EcParams
        | ValuePolicy::Date
        | ValuePolicy::MechanismList => AttrValue::Bytes(bytes.to_vec()),
        // A value of the wrong size for its type: keep the length only.
        _ => AttrValue::None,
    }
}

/// Captures a template. Before the call (`rv == None`) values are inputs; after it
/// (`C_GetAttributeValue`) they are outputs, read only where the call filled them.
///
/// # Safety
/// `template` must be null or point to `count` attributes, as the PKCS#11 call requires.
pub unsafe fn template(
    which: Template,
    template: CK_ATTRIBUTE_PTR,
    count: CK_ULONG,
    rv: Option<CK_RV>,
) -> Vec<Attr> {
    if template.is_null() {
        return Vec::new();
    }
    let filled = match rv {
        None => true,
        Some(rv) => matches!(
            rv,
            CKR_OK | CKR_ATTRIBUTE_SENSITIVE | CKR_ATTRIBUTE_TYPE_INVALID | CKR_BUFFER_TOO_SMALL
        ),
    };
    let count = (count as usize).min(MAX_TEMPLATE_ATTRS);
    // SAFETY: the caller passed `count` attributes.
    let attributes = unsafe { std::slice::from_raw_parts(template, count) };
    attributes
        .iter()
        .map(|attribute| {
            let kind = attribute.type_ as u64;
            let value = if filled {
                // SAFETY: pValue holds ulValueLen bytes (input), or the module wrote that many.
                unsafe {
                    read_value(
                        value_policy(kind),
                        attribute.pValue.cast(),
                        attribute.ulValueLen,
                    )
                }
            } else {
                match value_policy(kind) {
                    ValuePolicy::Redact => AttrValue::Redacted,
                    _ => AttrValue::None,
                }
            };
            Attr {
                template: which,
                kind: AttrType::Attribute(kind),
                len: recorded_len(attribute.ulValueLen),
                value,
            }
        })
        .collect()
}

/// Text of a fixed-size, blank-padded PKCS#11 string field.
pub fn fixed_text(bytes: &[u8]) -> String {
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ' && b != 0)
        .map_or(0, |i| i + 1);
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// An info-structure field as an `out` attribute.
pub fn field(field: InfoField, value: AttrValue) -> Attr {
    let len = match &value {
        AttrValue::Text(text) => text.len() as i64,
        _ => -1,
    };
    Attr {
        template: Template::Out,
        kind: AttrType::Field(field),
        len,
        value,
    }
}

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

/// Renders the non-secret fields of a mechanism's parameter (`mech_params`).
///
/// # Safety
/// `mechanism.pParameter` must be null or point to `ulParameterLen` readable bytes.
pub unsafe fn mechanism_params(mechanism: &CK_MECHANISM) -> Option<String> {
    let (p, len) = (mechanism.pParameter, mechanism.ulParameterLen);
    let mech = names::MECHANISM.render(mechanism.mechanism as u64);
    let mut out = String::new();
    // SAFETY (each `parameter` call): forwarded from this function's contract.
    match mechanism.mechanism {
        CKM_RSA_PKCS_OAEP => {
            let params: CK_RSA_PKCS_OAEP_PARAMS = unsafe { parameter(p, len) }?;
            let _ = write!(
                out,
                "hash={} mgf={} source={} source_len={}",
                names::MECHANISM.render(params.hashAlg as u64),
                names::MGF.render(params.mgf as u64),
                names::OAEP_SOURCE.render(params.source as u64),
                params.ulSourceDataLen
            );
        }
        _ if mech.ends_with("_PSS") => {
            let params: CK_RSA_PKCS_PSS_PARAMS = unsafe { parameter(p, len) }?;
            let _ = write!(
                out,
                "hash={} mgf={} salt_len={}",
                names::MECHANISM.render(params.hashAlg as u64),
                names::MGF.render(params.mgf as u64),
                params.sLen
            );
        }
        CKM_AES_GCM => {
            let params: CK_GCM_PARAMS = unsafe { parameter(p, len) }?;
            let _ = write!(
                out,
                "iv_len={} aad_len={} tag_bits={}",
                params.ulIvLen, params.ulAADLen, params.ulTagBits
            );
        }
        CKM_AES_CCM => {
            let params: CK_CCM_PARAMS = unsafe { parameter(p, len) }?;
            let _ = write!(
                out,
                "data_len={} nonce_len={} aad_len={} mac_len={}",
                params.ulDataLen, params.ulNonceLen, params.ulAADLen, params.ulMACLen
            );
        }
        CKM_AES_CTR => {
            let params: CK_AES_CTR_PARAMS = unsafe { parameter(p, len) }?;
            let _ = write!(out, "counter_bits={}", params.ulCounterBits);
        }
        CKM_ECDH1_DERIVE | CKM_ECDH1_COFACTOR_DERIVE => {
            let params: CK_ECDH1_DERIVE_PARAMS = unsafe { parameter(p, len) }?;
            let _ = write!(
                out,
                "kdf={} shared_data_len={} public_data_len={}",
                names::KDF.render(params.kdf as u64),
                params.ulSharedDataLen,
                params.ulPublicDataLen
            );
        }
        CKM_PKCS5_PBKD2 => {
            // PARAMS and PARAMS2 share this prefix; the password is never read.
            let params: CK_PKCS5_PBKD2_PARAMS2 = unsafe { parameter(p, len) }?;
            let _ = write!(
                out,
                "iterations={} prf={} salt_len={}",
                params.iterations, params.prf, params.ulSaltSourceDataLen
            );
        }
        CKM_EDDSA => {
            let params: CK_EDDSA_PARAMS = unsafe { parameter(p, len) }?;
            let _ = write!(
                out,
                "ph={} context_len={}",
                params.phFlag != 0,
                params.ulContextDataLen
            );
        }
        CKM_AES_CBC | CKM_AES_CBC_PAD | CKM_DES3_CBC | CKM_DES3_CBC_PAD | CKM_AES_CTS
        | CKM_AES_OFB | CKM_AES_CFB128 => {
            let _ = write!(out, "iv_len={len}");
        }
        _ if len > 0 => {
            let _ = write!(out, "param_len={len}");
        }
        _ => return None,
    }
    Some(out)
}
