//! `mech_params` from the raw parameter bytes p11-kit prints (`pParameter: (24) "…"`): the same
//! non-secret fields the shim reads from the structures in memory, decoded from their LP64
//! layout (every `CK_ULONG` and pointer 8 bytes, native byte order) when p11-kit printed all of
//! the bytes. A parameter it cut (`...`) decodes to nothing rather than to a guess.

use p11trace_record::names;
use p11trace_record::params::{MechParams, takes_bare_iv};

use super::values::Printed;

/// The `CK_ULONG` at byte `offset`.
fn ulong(bytes: &[u8], offset: usize) -> Option<u64> {
    let word: [u8; 8] = bytes.get(offset..offset + 8)?.try_into().ok()?;
    Some(u64::from_ne_bytes(word))
}

/// Reads a parameter structure's fields from its bytes.
type Decode = fn(&[u8]) -> Option<MechParams>;

/// The size of the parameter structure the shim decodes for `mechanism`, and how.
fn layout(mechanism: u64) -> Option<(usize, Decode)> {
    let name = names::MECHANISM.name(mechanism)?;
    Some(match name {
        // hashAlg, mgf, source, pSourceData, ulSourceDataLen
        "CKM_RSA_PKCS_OAEP" => (40, |b| {
            Some(MechParams {
                hash: ulong(b, 0),
                mgf: ulong(b, 8),
                source: ulong(b, 16),
                source_len: Some(ulong(b, 32)?),
                ..MechParams::default()
            })
        }),
        // hashAlg, mgf, sLen
        _ if name.ends_with("_PSS") => (24, |b| {
            Some(MechParams {
                hash: ulong(b, 0),
                mgf: ulong(b, 8),
                salt_len: Some(ulong(b, 16)?),
                ..MechParams::default()
            })
        }),
        // pIv, ulIvLen, ulIvBits, pAAD, ulAADLen, ulTagBits
        "CKM_AES_GCM" => (48, |b| {
            Some(MechParams {
                iv_len: ulong(b, 8),
                aad_len: ulong(b, 32),
                tag_bits: Some(ulong(b, 40)?),
                ..MechParams::default()
            })
        }),
        // ulDataLen, pNonce, ulNonceLen, pAAD, ulAADLen, ulMACLen
        "CKM_AES_CCM" => (48, |b| {
            Some(MechParams {
                data_len: ulong(b, 0),
                nonce_len: ulong(b, 16),
                aad_len: ulong(b, 32),
                mac_len: Some(ulong(b, 40)?),
                ..MechParams::default()
            })
        }),
        // ulCounterBits, cb[16]
        "CKM_AES_CTR" => (24, |b| {
            Some(MechParams {
                counter_bits: Some(ulong(b, 0)?),
                ..MechParams::default()
            })
        }),
        // kdf, ulSharedDataLen, pSharedData, ulPublicDataLen, pPublicData
        "CKM_ECDH1_DERIVE" | "CKM_ECDH1_COFACTOR_DERIVE" => (40, |b| {
            Some(MechParams {
                kdf: ulong(b, 0),
                shared_data_len: ulong(b, 8),
                public_data_len: Some(ulong(b, 24)?),
                ..MechParams::default()
            })
        }),
        // saltSource, pSaltSourceData, ulSaltSourceDataLen, iterations, prf, … (the password never)
        "CKM_PKCS5_PBKD2" => (72, |b| {
            Some(MechParams {
                iterations: ulong(b, 24),
                prf: Some(ulong(b, 32)?),
                ..MechParams::default()
            })
        }),
        // phFlag (CK_BBOOL, padded), ulContextDataLen, pContextData
        "CKM_EDDSA" => (24, |b| {
            Some(MechParams {
                prehash: Some(*b.first()? != 0),
                context_len: Some(ulong(b, 8)?),
                ..MechParams::default()
            })
        }),
        _ => return None,
    })
}

/// The parameter fields of `mechanism` from its printed parameter of `len` bytes (`None` when
/// NULL); None when they cannot be known (the bytes the fields live in were cut).
pub(super) fn mechanism_params(
    mechanism: u64,
    len: u64,
    printed: Option<&Printed>,
) -> Option<MechParams> {
    if let Some((size, decode)) = layout(mechanism)
        && len == size as u64
    {
        let printed = printed.filter(|p| p.whole)?;
        return decode(&printed.bytes);
    }
    if takes_bare_iv(mechanism) {
        return Some(MechParams {
            iv_len: Some(len),
            ..MechParams::default()
        });
    }
    Some(MechParams {
        param_len: Some(len),
        ..MechParams::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn printed(words: &[u64]) -> Printed {
        Printed {
            bytes: words.iter().flat_map(|w| w.to_ne_bytes()).collect(),
            whole: true,
        }
    }

    #[test]
    fn decodes_whole_parameters_and_refuses_cut_ones() {
        let pss = names::MECHANISM.code("CKM_SHA256_RSA_PKCS_PSS").unwrap();
        let params = mechanism_params(pss, 24, Some(&printed(&[0x250, 2, 32]))).unwrap();
        assert_eq!(
            params.render().as_deref(),
            Some("hash=CKM_SHA256 mgf=CKG_MGF1_SHA256 salt_len=32")
        );
        let gcm = names::MECHANISM.code("CKM_AES_GCM").unwrap();
        let mut cut = printed(&[0, 12, 96, 0, 0, 128]);
        cut.whole = false;
        assert_eq!(mechanism_params(gcm, 48, Some(&cut)), None);
        // A structure of another size is what the shim records as its length.
        assert_eq!(
            mechanism_params(gcm, 40, None)
                .and_then(|p| p.render())
                .as_deref(),
            Some("param_len=40")
        );
        let cbc = names::MECHANISM.code("CKM_AES_CBC").unwrap();
        assert_eq!(
            mechanism_params(cbc, 16, None)
                .and_then(|p| p.render())
                .as_deref(),
            Some("iv_len=16")
        );
        let rsa = names::MECHANISM.code("CKM_RSA_PKCS").unwrap();
        assert_eq!(
            mechanism_params(rsa, 0, None).and_then(|p| p.render()),
            None
        );
    }
}
