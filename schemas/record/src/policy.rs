//! Which attribute values may be recorded (an allowlist), and how captured values render.
//!
//! Everything not listed in [`value_policy`] is recorded as type + length with
//! `redacted = true`: its bytes are never read. `CKA_VALUE` and every private-key component are
//! deliberately absent. The same policy serves the shim (what to read) and the spy importer (what
//! to keep of a value the spy printed), so both produce identical rows.

use std::fmt::Write as _;

use crate::attr::{AttrType, AttrValue, InfoField};
use crate::names;

/// How an allowlisted attribute's value is read and rendered.
#[derive(Debug, Clone, Copy)]
pub enum ValuePolicy {
    /// Never read: type and length only.
    Redact,
    /// `CK_BBOOL`: `true` / `false`.
    Bool,
    /// `CK_ULONG` rendered as a number.
    Number,
    /// `CK_ULONG` rendered through a name table (class, key type, ...).
    Named(&'static names::Table),
    /// UTF-8 text (labels); hashed under `P11TRACE_REDACT=labels`.
    Label,
    /// Bytes rendered as hex (`CKA_ID`); hashed under `P11TRACE_REDACT=labels`.
    Identifier,
    /// Public bytes rendered as hex (public exponent, OIDs).
    PublicBytes,
    /// DER EC parameters: the curve name where known, else hex.
    EcParams,
    /// `CK_DATE`: 8 ASCII digits.
    Date,
    /// An array of `CK_MECHANISM_TYPE` (`CKA_ALLOWED_MECHANISMS`).
    MechanismList,
}

/// Longest value the shim reads for an allowlisted attribute; longer ones keep only their length.
pub const MAX_VALUE_LEN: usize = 256;

/// The allowlist. See `schemas/redaction.md` for the reasoning behind each entry.
pub fn value_policy(attribute: u64) -> ValuePolicy {
    use ValuePolicy::*;
    match attribute {
        0x000 => Named(&names::OBJECT_CLASS), // CKA_CLASS
        0x001 | 0x002 => Bool,                // CKA_TOKEN, CKA_PRIVATE
        0x003 => Label,                       // CKA_LABEL
        0x004 => Identifier,                  // CKA_UNIQUE_ID
        0x010 => Label,                       // CKA_APPLICATION
        0x012 => PublicBytes,                 // CKA_OBJECT_ID
        0x080 => Named(&names::CERTIFICATE_TYPE),
        0x086 => Bool,                     // CKA_TRUSTED
        0x087 | 0x088 => Number, // CKA_CERTIFICATE_CATEGORY, CKA_JAVA_MIDP_SECURITY_DOMAIN
        0x100 => Named(&names::KEY_TYPE), // CKA_KEY_TYPE
        0x102 => Identifier,     // CKA_ID
        0x103..=0x10c => Bool,   // CKA_SENSITIVE .. CKA_DERIVE
        0x110 | 0x111 => Date,   // CKA_START_DATE, CKA_END_DATE
        0x121 => Number,         // CKA_MODULUS_BITS
        0x122 => PublicBytes,    // CKA_PUBLIC_EXPONENT
        0x133 | 0x134 => Number, // CKA_PRIME_BITS, CKA_SUBPRIME_BITS
        0x160 | 0x161 => Number, // CKA_VALUE_BITS, CKA_VALUE_LEN
        0x162..=0x165 => Bool, // CKA_EXTRACTABLE, CKA_LOCAL, CKA_NEVER_EXTRACTABLE, CKA_ALWAYS_SENSITIVE
        0x166 => Named(&names::MECHANISM), // CKA_KEY_GEN_MECHANISM
        0x170..=0x172 => Bool, // CKA_MODIFIABLE, CKA_COPYABLE, CKA_DESTROYABLE
        0x180 => EcParams,     // CKA_EC_PARAMS
        0x202 | 0x210 => Bool, // CKA_ALWAYS_AUTHENTICATE, CKA_WRAP_WITH_TRUSTED
        0x300 => Number,       // CKA_HW_FEATURE_TYPE
        0x601 => Number,       // CKA_PROFILE_ID
        0x61d => Number,       // CKA_PARAMETER_SET
        0x633 | 0x634 => Bool, // CKA_ENCAPSULATE, CKA_DECAPSULATE
        0x4000_0600 => MechanismList, // CKA_ALLOWED_MECHANISMS
        _ => Redact,
    }
}

/// A value from its raw bytes under the allowlist: how the shim reads caller memory and how the
/// spy importer reads a hex dump, so both record the same value. Integers are in this machine's
/// byte order (PKCS#11 `CK_ULONG`s are native).
pub fn value_from_bytes(attribute: u64, bytes: &[u8]) -> AttrValue {
    match value_policy(attribute) {
        ValuePolicy::Redact => AttrValue::Redacted,
        _ if bytes.len() > MAX_VALUE_LEN => AttrValue::None,
        ValuePolicy::Bool if bytes.len() == 1 => AttrValue::Bool(bytes[0] != 0),
        ValuePolicy::Number | ValuePolicy::Named(_) if bytes.len() == 8 => {
            let mut word = [0u8; 8];
            word.copy_from_slice(bytes);
            AttrValue::Ulong(u64::from_ne_bytes(word))
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

/// Renders a captured value for the `attrs.value` column (`None` = null).
pub fn render_value(kind: AttrType, value: &AttrValue) -> Option<String> {
    let policy = match kind {
        AttrType::Attribute(code) => value_policy(code),
        AttrType::Field(InfoField::State) => ValuePolicy::Number,
        AttrType::Field(_) => ValuePolicy::Number,
    };
    Some(match value {
        AttrValue::Redacted | AttrValue::None => return None,
        AttrValue::Bool(flag) => flag.to_string(),
        AttrValue::Ulong(number) => match policy {
            ValuePolicy::Named(table) => table.render(*number).into_owned(),
            _ => number.to_string(),
        },
        AttrValue::Text(text) => text.clone(),
        AttrValue::Bytes(bytes) => match policy {
            ValuePolicy::EcParams => curve_name(bytes).map_or_else(|| hex(bytes), str::to_owned),
            ValuePolicy::Date => String::from_utf8_lossy(bytes).into_owned(),
            ValuePolicy::MechanismList => mechanism_list(bytes),
            _ => hex(bytes),
        },
        AttrValue::Hashed(digest) => format!("hmac:{}", hex(digest)),
        AttrValue::Version(major, minor) => format!("{major}.{minor}"),
    })
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

fn mechanism_list(bytes: &[u8]) -> String {
    bytes
        .chunks_exact(8)
        .map(|chunk| {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            names::MECHANISM
                .render(u64::from_ne_bytes(word))
                .into_owned()
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Named curves by their DER-encoded OID (the usual content of `CKA_EC_PARAMS`).
const CURVES: &[(&[u8], &str)] = &[
    (
        &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
        "secp256r1",
    ),
    (&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22], "secp384r1"),
    (&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23], "secp521r1"),
    (&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x21], "secp224r1"),
    (&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a], "secp256k1"),
    (
        &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x01],
        "secp192r1",
    ),
    (
        &[
            0x06, 0x09, 0x2b, 0x24, 0x03, 0x03, 0x02, 0x08, 0x01, 0x01, 0x07,
        ],
        "brainpoolP256r1",
    ),
    (
        &[
            0x06, 0x09, 0x2b, 0x24, 0x03, 0x03, 0x02, 0x08, 0x01, 0x01, 0x0b,
        ],
        "brainpoolP384r1",
    ),
    (
        &[
            0x06, 0x09, 0x2b, 0x24, 0x03, 0x03, 0x02, 0x08, 0x01, 0x01, 0x0d,
        ],
        "brainpoolP512r1",
    ),
    (&[0x06, 0x03, 0x2b, 0x65, 0x70], "ed25519"),
    (&[0x06, 0x03, 0x2b, 0x65, 0x71], "ed448"),
    (&[0x06, 0x03, 0x2b, 0x65, 0x6e], "x25519"),
    (&[0x06, 0x03, 0x2b, 0x65, 0x6f], "x448"),
];

/// The curve name for DER EC parameters, if it is a known named curve.
pub fn curve_name(der: &[u8]) -> Option<&'static str> {
    CURVES
        .iter()
        .find(|(oid, _)| *oid == der)
        .map(|(_, name)| *name)
}

/// Text of a fixed-size, blank-padded PKCS#11 string field (trailing blanks and NULs removed).
pub fn fixed_text_of(bytes: &[u8]) -> String {
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ' && b != 0)
        .map_or(0, |i| i + 1);
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The `provider` string: manufacturer, library description and library version of `C_GetInfo`.
pub fn provider_string(manufacturer: &str, description: &str, version: (u8, u8)) -> String {
    format!(
        "{} {} {}.{}",
        manufacturer.trim_end(),
        description.trim_end(),
        version.0,
        version.1
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use AttrType;

    #[test]
    fn secrets_are_not_on_the_allowlist() {
        for secret in [
            0x11,
            0x123,
            0x124,
            0x125,
            0x126,
            0x127,
            0x128,
            0x90,
            0x4000_0211,
        ] {
            assert!(
                matches!(value_policy(secret), ValuePolicy::Redact),
                "{secret:#x}"
            );
        }
    }

    #[test]
    fn values_render_by_policy() {
        let attr = AttrType::Attribute;
        assert_eq!(
            render_value(attr(0), &AttrValue::Ulong(3)).as_deref(),
            Some("CKO_PRIVATE_KEY")
        );
        assert_eq!(
            render_value(attr(0x100), &AttrValue::Ulong(0)).as_deref(),
            Some("CKK_RSA")
        );
        assert_eq!(
            render_value(attr(0x121), &AttrValue::Ulong(2048)).as_deref(),
            Some("2048")
        );
        assert_eq!(
            render_value(attr(1), &AttrValue::Bool(true)).as_deref(),
            Some("true")
        );
        assert_eq!(
            render_value(attr(0x102), &AttrValue::Bytes(vec![1, 0xab])).as_deref(),
            Some("01ab")
        );
        let p256 = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        assert_eq!(
            render_value(attr(0x180), &AttrValue::Bytes(p256)).as_deref(),
            Some("secp256r1")
        );
        assert_eq!(render_value(attr(0x11), &AttrValue::Redacted), None);
        let mechs = [1u64, 0x1041]
            .iter()
            .flat_map(|m| m.to_ne_bytes())
            .collect();
        assert_eq!(
            render_value(attr(0x4000_0600), &AttrValue::Bytes(mechs)).as_deref(),
            Some("CKM_RSA_PKCS,CKM_ECDSA")
        );
        assert_eq!(
            render_value(
                AttrType::Field(InfoField::LibraryVersion),
                &AttrValue::Version(2, 6)
            )
            .as_deref(),
            Some("2.6")
        );
    }
}
