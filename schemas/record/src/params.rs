//! `mech_params`: the non-secret fields of known mechanism parameter structures, rendered the same
//! way whether the shim read them from memory or the importer read them from a pkcs11-spy log.
//!
//! Never included: OAEP source data, PBKDF2 passwords and salts, derivation data, IVs' contents:
//! only their lengths.

use std::fmt::Write as _;

use crate::names;

/// Fields of a mechanism parameter that may be recorded. Unset fields are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MechParams {
    pub hash: Option<u64>,
    pub mgf: Option<u64>,
    pub source: Option<u64>,
    pub source_len: Option<u64>,
    pub salt_len: Option<u64>,
    pub iv_len: Option<u64>,
    pub aad_len: Option<u64>,
    pub tag_bits: Option<u64>,
    pub nonce_len: Option<u64>,
    pub mac_len: Option<u64>,
    pub data_len: Option<u64>,
    pub counter_bits: Option<u64>,
    pub kdf: Option<u64>,
    pub shared_data_len: Option<u64>,
    pub public_data_len: Option<u64>,
    pub iterations: Option<u64>,
    pub prf: Option<u64>,
    pub prehash: Option<bool>,
    pub context_len: Option<u64>,
    /// `ulParameterLen`, set only where the parameter's structure is not decoded.
    pub param_len: Option<u64>,
}

impl MechParams {
    /// The rendering stored in `mech_params`, or `None` when there is nothing to say.
    pub fn render(&self) -> Option<String> {
        let mut out = String::new();
        let mut field = |name: &str, value: String| {
            if !out.is_empty() {
                out.push(' ');
            }
            let _ = write!(out, "{name}={value}");
        };
        let named = |table: &names::Table, value: u64| table.render(value).into_owned();
        if let Some(v) = self.hash {
            field("hash", named(&names::MECHANISM, v));
        }
        if let Some(v) = self.mgf {
            field("mgf", named(&names::MGF, v));
        }
        if let Some(v) = self.source {
            field("source", named(&names::OAEP_SOURCE, v));
        }
        let numbers = [
            ("source_len", self.source_len),
            ("salt_len", self.salt_len),
            ("data_len", self.data_len),
            ("nonce_len", self.nonce_len),
            ("iv_len", self.iv_len),
            ("aad_len", self.aad_len),
            ("tag_bits", self.tag_bits),
            ("mac_len", self.mac_len),
            ("counter_bits", self.counter_bits),
        ];
        for (name, value) in numbers {
            if let Some(v) = value {
                field(name, v.to_string());
            }
        }
        if let Some(v) = self.kdf {
            field("kdf", named(&names::KDF, v));
        }
        for (name, value) in [
            ("shared_data_len", self.shared_data_len),
            ("public_data_len", self.public_data_len),
        ] {
            if let Some(v) = value {
                field(name, v.to_string());
            }
        }
        if let Some(v) = self.iterations {
            field("iterations", v.to_string());
        }
        if let Some(v) = self.prf {
            field("prf", v.to_string());
        }
        if let Some(v) = self.prehash {
            field("ph", v.to_string());
        }
        if let Some(v) = self.context_len {
            field("context_len", v.to_string());
        }
        if let Some(len) = self.param_len.filter(|&len| len > 0) {
            field("param_len", len.to_string());
        }
        (!out.is_empty()).then_some(out)
    }
}

/// Mechanisms whose parameter is a bare IV (its length is `ulParameterLen`).
pub fn takes_bare_iv(mechanism: u64) -> bool {
    matches!(
        names::MECHANISM.name(mechanism),
        Some(
            "CKM_AES_CBC"
                | "CKM_AES_CBC_PAD"
                | "CKM_DES3_CBC"
                | "CKM_DES3_CBC_PAD"
                | "CKM_DES_CBC"
                | "CKM_DES_CBC_PAD"
                | "CKM_AES_CTS"
                | "CKM_AES_OFB"
                | "CKM_AES_CFB128"
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_known_fields_in_a_fixed_order() {
        let oaep = MechParams {
            hash: Some(0x250),
            mgf: Some(2),
            source: Some(1),
            source_len: Some(0),
            ..Default::default()
        };
        assert_eq!(
            oaep.render().as_deref(),
            Some("hash=CKM_SHA256 mgf=CKG_MGF1_SHA256 source=CKZ_DATA_SPECIFIED source_len=0")
        );
        let gcm = MechParams {
            iv_len: Some(12),
            aad_len: Some(0),
            tag_bits: Some(128),
            ..Default::default()
        };
        assert_eq!(
            gcm.render().as_deref(),
            Some("iv_len=12 aad_len=0 tag_bits=128")
        );
        assert_eq!(
            MechParams {
                param_len: Some(0),
                ..Default::default()
            }
            .render(),
            None
        );
        assert_eq!(
            MechParams {
                param_len: Some(8),
                ..Default::default()
            }
            .render()
            .as_deref(),
            Some("param_len=8")
        );
    }
}
