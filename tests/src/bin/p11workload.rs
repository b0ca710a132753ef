//! `p11workload MODULE PIN sign N` / `p11workload MODULE PIN mechanisms N`: fixed scripts for the
//! `compare` and `diff` tests. Every failing call is counted and the script goes on (a release
//! that starts failing must still produce a full recording); prints one JSON line of counts.
//!
//! - `sign N [THINK_US]`: log in, generate a session EC P-256 key pair, then N ×
//!   (`C_SignInit(CKM_ECDSA)`, `C_Sign`, `C_VerifyInit`, `C_Verify`, `C_GetSessionInfo`,
//!   `C_GenerateRandom`, then THINK_US µs of the application's own work, a busy wait) and
//!   N × (`C_DigestInit(CKM_SHA256)`, `C_Digest`), log out.
//! - `mechanisms N`: without logging in, for each of several digest mechanisms
//!   `C_GetMechanismInfo`, then N × (`C_DigestInit`, `C_Digest`) where the init succeeded —
//!   tokens differ in which of them they support.

use std::path::Path;
use std::ptr;

use anyhow::{Context, Result, bail};
use p11trace_tests::module::{Module, check};
use p11trace_tests::p11;
use pkcs11_sys::*;

/// Calls that did not return CKR_OK.
#[derive(Default)]
struct Failures(u64);

impl Failures {
    fn note(&mut self, rv: CK_RV) -> bool {
        let ok = rv == CKR_OK as CK_RV;
        if !ok {
            self.0 += 1;
        }
        ok
    }
}

const P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

fn attribute<T>(kind: u64, value: &mut T) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: kind as CK_ATTRIBUTE_TYPE,
        pValue: (value as *mut T).cast(),
        ulValueLen: std::mem::size_of::<T>() as CK_ULONG,
    }
}

/// A session EC P-256 key pair: (public, private).
fn ec_key_pair(module: &Module, session: CK_SESSION_HANDLE) -> Result<(u64, u64)> {
    let (mut yes, mut no) = (CK_TRUE as CK_BBOOL, CK_FALSE as CK_BBOOL);
    let mut params = P256;
    let mut public = [
        CK_ATTRIBUTE {
            type_: CKA_EC_PARAMS as CK_ATTRIBUTE_TYPE,
            pValue: params.as_mut_ptr().cast(),
            ulValueLen: params.len() as CK_ULONG,
        },
        attribute(CKA_TOKEN, &mut no),
        attribute(CKA_VERIFY, &mut yes),
    ];
    let (mut yes2, mut no2) = (CK_TRUE as CK_BBOOL, CK_FALSE as CK_BBOOL);
    let mut private = [
        attribute(CKA_TOKEN, &mut no2),
        attribute(CKA_SIGN, &mut yes2),
    ];
    let mut mechanism = CK_MECHANISM {
        mechanism: CKM_EC_KEY_PAIR_GEN as CK_MECHANISM_TYPE,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    let (rv, public_key, private_key) =
        module.generate_key_pair(session, &mut mechanism, &mut public, &mut private);
    check(rv, "C_GenerateKeyPair")?;
    Ok((public_key, private_key))
}

fn mechanism(kind: u64) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: kind as CK_MECHANISM_TYPE,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    }
}

/// `C_DigestInit` then, if it worked, `C_Digest` of 64 bytes.
fn digest(module: &Module, session: CK_SESSION_HANDLE, kind: u64, failures: &mut Failures) {
    let mut mech = mechanism(kind);
    if !failures.note(p11!(module, C_DigestInit(session, &mut mech))) {
        return;
    }
    let mut data = [0x5au8; 64];
    let mut out = [0u8; 128];
    let mut out_len = out.len() as CK_ULONG;
    failures.note(p11!(
        module,
        C_Digest(
            session,
            data.as_mut_ptr(),
            data.len() as CK_ULONG,
            out.as_mut_ptr(),
            &mut out_len
        )
    ));
}

/// The application's own work between calls: a busy wait.
fn think(pause: std::time::Duration) {
    let until = std::time::Instant::now() + pause;
    while std::time::Instant::now() < until {
        std::hint::spin_loop();
    }
}

fn sign(
    module: &Module,
    session: CK_SESSION_HANDLE,
    rounds: usize,
    pause: std::time::Duration,
) -> Result<u64> {
    let mut failures = Failures::default();
    let (public_key, private_key) = ec_key_pair(module, session)?;
    for _ in 0..rounds {
        let mut data = [0x11u8; 32];
        let mut signature = [0u8; 128];
        let mut len = signature.len() as CK_ULONG;
        let mut mech = mechanism(CKM_ECDSA);
        if failures.note(p11!(
            module,
            C_SignInit(session, &mut mech, private_key as CK_OBJECT_HANDLE)
        )) && failures.note(p11!(
            module,
            C_Sign(
                session,
                data.as_mut_ptr(),
                data.len() as CK_ULONG,
                signature.as_mut_ptr(),
                &mut len
            )
        )) && failures.note(p11!(
            module,
            C_VerifyInit(session, &mut mech, public_key as CK_OBJECT_HANDLE)
        )) {
            failures.note(p11!(
                module,
                C_Verify(
                    session,
                    data.as_mut_ptr(),
                    data.len() as CK_ULONG,
                    signature.as_mut_ptr(),
                    len
                )
            ));
        }
        // SAFETY: zeroed is a valid CK_SESSION_INFO (plain integers).
        let mut info: CK_SESSION_INFO = unsafe { std::mem::zeroed() };
        failures.note(p11!(module, C_GetSessionInfo(session, &mut info)));
        let mut random = [0u8; 32];
        failures.note(p11!(
            module,
            C_GenerateRandom(session, random.as_mut_ptr(), random.len() as CK_ULONG)
        ));
        think(pause);
    }
    for _ in 0..rounds {
        digest(module, session, CKM_SHA256, &mut failures);
    }
    Ok(failures.0)
}

/// CKM_MD5, CKM_SHA_1, CKM_SHA224, CKM_SHA256, CKM_SHA384, CKM_SHA512, CKM_SHA3_256,
/// CKM_SHA3_512 (PKCS#11 3.0, not in pkcs11-sys's 2.40 headers), CKM_RIPEMD160.
const DIGESTS: &[u64] = &[
    0x210, 0x220, 0x255, 0x250, 0x260, 0x270, 0x2b0, 0x2d0, 0x240,
];

fn mechanisms(module: &Module, slot: CK_SLOT_ID, session: CK_SESSION_HANDLE, rounds: usize) -> u64 {
    let mut failures = Failures::default();
    for kind in DIGESTS {
        // SAFETY: zeroed is a valid CK_MECHANISM_INFO (plain integers).
        let mut info: CK_MECHANISM_INFO = unsafe { std::mem::zeroed() };
        failures.note(p11!(
            module,
            C_GetMechanismInfo(slot, *kind as CK_MECHANISM_TYPE, &mut info)
        ));
        for _ in 0..rounds {
            digest(module, session, *kind, &mut failures);
        }
    }
    failures.0
}

fn run(args: &[String]) -> Result<u64> {
    let (module, pin, mode, rounds, think_us) = match args {
        [_, module, pin, mode, rounds] => (module, pin, mode, rounds, "0"),
        [_, module, pin, mode, rounds, think] => (module, pin, mode, rounds, think.as_str()),
        _ => bail!("usage: p11workload MODULE PIN sign N [THINK_US] | mechanisms N"),
    };
    let rounds: usize = rounds.parse().context("N is a number")?;
    let pause = std::time::Duration::from_micros(think_us.parse().context("THINK_US is a number")?);
    let module = Module::load(Path::new(module))?;
    check(
        module.initialize(CKF_OS_LOCKING_OK as CK_FLAGS),
        "C_Initialize",
    )?;
    let slot = *module.slots()?.first().context("no slot with a token")?;
    let session = module.open_session(slot)?;
    let failures = match mode.as_str() {
        "sign" => {
            module.login(session, pin)?;
            let failures = sign(&module, session, rounds, pause)?;
            check(p11!(module, C_Logout(session)), "C_Logout")?;
            failures
        }
        "mechanisms" => mechanisms(&module, slot, session, rounds),
        other => bail!("unknown mode {other}"),
    };
    check(p11!(module, C_CloseSession(session)), "C_CloseSession")?;
    check(module.finalize(), "C_Finalize")?;
    Ok(failures)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match run(&args) {
        Ok(failures) => println!("{{\"failures\": {failures}}}"),
        Err(error) => {
            eprintln!("p11workload: {error:#}");
            std::process::exit(1);
        }
    }
}
