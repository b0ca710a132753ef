//! Ed25519 key pairs for signing digests: the private key as PKCS#8 PEM (`KEY`, mode 0600), the
//! public key as SubjectPublicKeyInfo PEM (`KEY.pub`), both readable by `openssl pkey`.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};

use crate::digest::{Digest, Signature};

/// Where the public half of the key at `private` is written: `private` + `.pub`.
pub fn public_path(private: &Path) -> PathBuf {
    let mut name = private.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Generates a key pair from the operating system's random source and writes `out` and
/// `out.pub`; refuses to overwrite either. Returns the public key as hex.
pub fn generate(out: &Path) -> Result<String> {
    let public = public_path(out);
    if public.exists() {
        bail!("{} exists already; not overwriting a key", public.display());
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow!("no random bytes from the system: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    seed.fill(0);
    // PKCS#8 v1 (the seed alone): OpenSSL 3.0 does not read the v2 form with the public key.
    let private_pem = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_pem(LineEnding::LF)
    .map_err(|e| anyhow!("cannot encode the private key: {e}"))?;
    let public_pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| anyhow!("cannot encode the public key: {e}"))?;
    write_new(out, private_pem.as_bytes())?;
    if let Err(error) = write_new(&public, public_pem.as_bytes()) {
        let _ = std::fs::remove_file(out);
        return Err(error);
    }
    Ok(crate::hex(key.verifying_key().as_bytes()))
}

/// Reads a private key written by [`generate`] (or any PKCS#8 PEM Ed25519 key).
pub fn load_signing(path: &Path) -> Result<SigningKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read signing key {}", path.display()))?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| {
        anyhow!(
            "{}: not a PKCS#8 PEM Ed25519 private key ({e})",
            path.display()
        )
    })
}

/// Reads a public key: SubjectPublicKeyInfo PEM, or 64 hex digits.
pub fn load_verifying(path: &Path) -> Result<VerifyingKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read public key {}", path.display()))?;
    if let Some(bytes) = crate::unhex(text.trim()).and_then(|b| <[u8; 32]>::try_from(b).ok()) {
        return VerifyingKey::from_bytes(&bytes)
            .map_err(|e| anyhow!("{}: not an Ed25519 public key ({e})", path.display()));
    }
    VerifyingKey::from_public_key_pem(&text).map_err(|e| {
        anyhow!(
            "{}: not an SPKI PEM Ed25519 public key ({e})",
            path.display()
        )
    })
}

/// Signs `digest` in place (sets `signer` first: the signature covers it).
pub fn sign(digest: &mut Digest, key: &SigningKey) {
    let public = crate::hex(key.verifying_key().as_bytes());
    digest.signer = Some(public.clone());
    digest.signature = None;
    let value = key.sign(&digest.signed_bytes());
    digest.signature = Some(Signature {
        algorithm: "ed25519".to_owned(),
        public_key: public,
        value: crate::hex(&value.to_bytes()),
    });
}

/// Checks `digest`'s signature against `key`, or against the key it names when `key` is
/// `None`. `Ok(None)`: unsigned; `Ok(Some(hex))`: valid, by that key; `Err`: what is wrong.
pub fn check(digest: &Digest, key: Option<&VerifyingKey>) -> Result<Option<String>, String> {
    let Some(signature) = &digest.signature else {
        return match key {
            Some(_) => Err("unsigned, but --public-key requires a signature".to_owned()),
            None => Ok(None),
        };
    };
    if signature.algorithm != "ed25519" {
        return Err(format!(
            "unknown signature algorithm {:?}",
            signature.algorithm
        ));
    }
    if digest.signer.as_deref() != Some(signature.public_key.as_str()) {
        return Err("signer and signature.public_key differ".to_owned());
    }
    let named = crate::unhex(&signature.public_key)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
        .ok_or("signature.public_key is not an Ed25519 public key")?;
    if let Some(key) = key
        && key != &named
    {
        return Err(format!(
            "signed by {}, not by the --public-key",
            signature.public_key
        ));
    }
    let value = crate::unhex(&signature.value)
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .ok_or("signature.value is not 64 bytes of hex")?;
    named
        .verify(
            &digest.signed_bytes(),
            &ed25519_dalek::Signature::from_bytes(&value),
        )
        .map_err(|_| "bad signature (the digest was changed after signing)".to_owned())?;
    Ok(Some(signature.public_key.clone()))
}
