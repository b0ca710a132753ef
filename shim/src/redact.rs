//! `P11TRACE_REDACT=labels`: labels and ids leave the shim only as a keyed hash.
//!
//! The key is the per-dataset secret the recorder hands over in its welcome, so equal labels stay
//! joinable within a dataset while a dictionary of likely labels cannot be checked against it.
//! Hashing happens on the sender thread, just before a batch is encoded.

use hmac::{Hmac, Mac};
use p11trace_record::attr::InfoField;
use p11trace_record::attr::{AttrType, AttrValue};
use p11trace_record::policy::{ValuePolicy, value_policy};
use p11trace_record::wire::CallRecord;
use sha2::Sha256;

fn is_label_like(kind: AttrType) -> bool {
    match kind {
        AttrType::Attribute(code) => matches!(
            value_policy(code),
            ValuePolicy::Label | ValuePolicy::Identifier
        ),
        AttrType::Field(field) => matches!(field, InfoField::Label | InfoField::SerialNumber),
    }
}

/// First 16 bytes of HMAC-SHA256(`key`, `bytes`).
pub fn keyed_hash(key: &[u8; 32], bytes: &[u8]) -> [u8; 16] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(bytes);
    let digest = mac.finalize().into_bytes();
    let mut short = [0u8; 16];
    short.copy_from_slice(&digest[..16]);
    short
}

/// Replaces every label and id value of `record` by its keyed hash.
pub fn hash_labels(record: &mut CallRecord, key: &[u8; 32]) {
    for attr in record.attrs.iter_mut().flatten() {
        if !is_label_like(attr.kind) {
            continue;
        }
        let hashed = match &attr.value {
            AttrValue::Text(text) => keyed_hash(key, text.as_bytes()),
            AttrValue::Bytes(bytes) => keyed_hash(key, bytes),
            _ => continue,
        };
        attr.value = AttrValue::Hashed(hashed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p11trace_record::attr::{Attr, Template};

    #[test]
    fn labels_and_ids_are_hashed_and_equal_labels_stay_equal() {
        let label = |value| Attr {
            template: Template::In,
            kind: AttrType::Attribute(3),
            len: 3,
            value,
        };
        let class = Attr {
            template: Template::In,
            kind: AttrType::Attribute(0),
            len: 8,
            value: AttrValue::Ulong(3),
        };
        let mut record = CallRecord {
            attrs: Some(vec![
                label(AttrValue::Text("abc".into())),
                class.clone(),
                label(AttrValue::Text("abc".into())),
            ]),
            ..Default::default()
        };
        hash_labels(&mut record, &[7; 32]);
        let attrs = record.attrs.unwrap();
        assert!(matches!(attrs[0].value, AttrValue::Hashed(_)));
        assert_eq!(attrs[0].value, attrs[2].value);
        assert_eq!(attrs[1], class);
        assert_ne!(keyed_hash(&[7; 32], b"abc"), keyed_hash(&[8; 32], b"abc"));
    }
}
