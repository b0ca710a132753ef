//! The benchmark client (`p11trace-bench client`): loads one PKCS#11 module by path, opens a
//! logged-in session on a token, and times batches of one operation. Every configuration (direct,
//! pkcs11-spy, shim) runs this same code in its own process, so the only difference between them
//! is the module behind the function pointers.

use std::path::Path;
use std::ptr;
use std::time::Instant;

use anyhow::{Context, Result};
use p11trace_tests::module::{Module, check};
use p11trace_tests::p11;
use pkcs11_sys::*;
use serde::{Deserialize, Serialize};

/// An operation the client times. Some are more than one call (`calls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// `C_GetSessionInfo`: the cheapest real call, the one the overhead targets are about.
    SessionInfo,
    /// `C_GenerateRandom` of 32 bytes.
    Random,
    /// `C_DigestInit(SHA-256)` + `C_Digest` of 64 bytes.
    Digest,
    /// `C_FindObjectsInit(private keys)` + `C_FindObjects` + `C_FindObjectsFinal`.
    Find,
    /// `C_FindObjectsInit` with a 4-attribute template (class, key type, token, label) +
    /// `C_FindObjectsFinal`: the template-carrying call of the instruction budget.
    FindTemplate,
    /// `C_SignInit(SHA256-RSA-PKCS)` + `C_Sign` of 64 bytes with an RSA-2048 key.
    SignRsa,
    /// `C_SignInit(ECDSA)` + `C_Sign` of a 32-byte hash with an EC P-256 key.
    SignEc,
}

impl Op {
    pub const ALL: [Op; 7] = [
        Op::SessionInfo,
        Op::Random,
        Op::Digest,
        Op::Find,
        Op::FindTemplate,
        Op::SignRsa,
        Op::SignEc,
    ];

    /// PKCS#11 calls per operation.
    pub fn calls(self) -> u32 {
        match self {
            Op::SessionInfo | Op::Random => 1,
            Op::Digest | Op::SignRsa | Op::SignEc | Op::FindTemplate => 2,
            Op::Find => 3,
        }
    }

    /// Operations per timed batch at scale 1 (about 0.1–0.3 s direct on this machine).
    pub fn batch(self) -> u64 {
        match self {
            Op::SessionInfo | Op::Random => 20_000,
            Op::Digest => 10_000,
            Op::Find => 4_000,
            Op::FindTemplate => 10_000,
            Op::SignEc => 300,
            Op::SignRsa => 100,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Op::SessionInfo => "C_GetSessionInfo",
            Op::Random => "C_GenerateRandom(32)",
            Op::Digest => "C_DigestInit+C_Digest(64 B, SHA-256)",
            Op::Find => "C_FindObjectsInit/FindObjects/Final",
            Op::FindTemplate => "C_FindObjectsInit(4 attributes)+C_FindObjectsFinal",
            Op::SignRsa => "C_SignInit+C_Sign (RSA-2048)",
            Op::SignEc => "C_SignInit+C_Sign (EC P-256)",
        }
    }

    /// Cheap calls: where the shim's added latency is targeted at ≤ 1/10 of the spy's.
    pub fn cheap(self) -> bool {
        matches!(self, Op::SessionInfo | Op::Random | Op::Digest)
    }
}

/// What the client prints for one operation (one JSON line on stdout).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Timing {
    pub op: Op,
    /// Nanoseconds per operation, one value per batch.
    pub ns_per_op: Vec<f64>,
}

/// Labels of the keys the bench token holds (see [`crate::token`]).
pub const RSA_LABEL: &str = "bench-rsa";
pub const EC_LABEL: &str = "bench-ec";

/// A logged-in session on the token labelled `label`.
pub struct Session {
    module: Module,
    handle: CK_SESSION_HANDLE,
}

fn padded_label(label: &str) -> [u8; 32] {
    let mut padded = [b' '; 32];
    let bytes = label.as_bytes();
    padded[..bytes.len().min(32)].copy_from_slice(&bytes[..bytes.len().min(32)]);
    padded
}

/// The slot holding the token labelled `label`.
fn find_slot(module: &Module, label: &str) -> Result<CK_SLOT_ID> {
    let wanted = padded_label(label);
    module
        .slots()?
        .into_iter()
        .find(|&slot| {
            // SAFETY: CK_TOKEN_INFO is plain data; all-zero is a valid value to overwrite.
            let mut info: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
            p11!(module, C_GetTokenInfo(slot, &mut info)) == CKR_OK as CK_RV && info.label == wanted
        })
        .with_context(|| format!("no token labelled `{label}`"))
}

/// Opens a read-write session on the token labelled `label` and logs the user in.
fn logged_in_session(module: &Module, label: &str, pin: &str) -> Result<CK_SESSION_HANDLE> {
    let handle = module.open_session(find_slot(module, label)?)?;
    module.login(handle, pin)?;
    Ok(handle)
}

impl Session {
    pub fn open(module: &Path, label: &str, pin: &str) -> Result<Session> {
        let module = Module::load(module)?;
        let initialize = || {
            check(
                module.initialize(CKF_OS_LOCKING_OK as CK_FLAGS),
                "C_Initialize",
            )
        };
        initialize()?;
        // SoftHSM2 reads its file store in C_Initialize; a read that collides with another
        // process's lock (16 clients starting at once) leaves the token out, or its PIN unset,
        // until the next C_Initialize: initialise again before giving up.
        let mut attempts = 0;
        let handle = loop {
            match logged_in_session(&module, label, pin) {
                Ok(handle) => break handle,
                Err(_) if attempts < 50 => {
                    attempts += 1;
                    module.finalize();
                    std::thread::sleep(std::time::Duration::from_millis(5 + attempts * 2));
                    initialize()?;
                }
                Err(error) => return Err(error),
            }
        };
        Ok(Session { module, handle })
    }

    /// The private key labelled `label`.
    fn private_key(&self, label: &str) -> Result<CK_OBJECT_HANDLE> {
        let mut class: CK_OBJECT_CLASS = CKO_PRIVATE_KEY as CK_OBJECT_CLASS;
        let mut label = label.as_bytes().to_vec();
        let mut template = [
            CK_ATTRIBUTE {
                type_: CKA_CLASS as CK_ATTRIBUTE_TYPE,
                pValue: (&raw mut class).cast(),
                ulValueLen: size_of::<CK_OBJECT_CLASS>() as CK_ULONG,
            },
            CK_ATTRIBUTE {
                type_: CKA_LABEL as CK_ATTRIBUTE_TYPE,
                pValue: label.as_mut_ptr().cast(),
                ulValueLen: label.len() as CK_ULONG,
            },
        ];
        let found = self.find(&mut template, 1)?;
        found
            .first()
            .copied()
            .context("the bench key is missing from the token")
    }

    /// FindObjectsInit/FindObjects/FindObjectsFinal; up to `max` handles.
    fn find(&self, template: &mut [CK_ATTRIBUTE], max: usize) -> Result<Vec<CK_OBJECT_HANDLE>> {
        let module = &self.module;
        check(
            p11!(
                module,
                C_FindObjectsInit(
                    self.handle,
                    template.as_mut_ptr(),
                    template.len() as CK_ULONG
                )
            ),
            "C_FindObjectsInit",
        )?;
        let mut found = vec![0 as CK_OBJECT_HANDLE; max];
        let mut count: CK_ULONG = 0;
        let rv = p11!(
            module,
            C_FindObjects(self.handle, found.as_mut_ptr(), max as CK_ULONG, &mut count)
        );
        check(
            p11!(module, C_FindObjectsFinal(self.handle)),
            "C_FindObjectsFinal",
        )?;
        check(rv, "C_FindObjects")?;
        found.truncate(count as usize);
        Ok(found)
    }

    /// Runs one operation `n` times, at most `pace` per second if given; returns the elapsed
    /// nanoseconds.
    fn time(&self, op: Op, n: u64, keys: &Keys, pace: Option<f64>) -> Result<u128> {
        let module = &self.module;
        let session = self.handle;
        let mut class: CK_OBJECT_CLASS = CKO_PRIVATE_KEY as CK_OBJECT_CLASS;
        let mut find_template = [CK_ATTRIBUTE {
            type_: CKA_CLASS as CK_ATTRIBUTE_TYPE,
            pValue: (&raw mut class).cast(),
            ulValueLen: size_of::<CK_OBJECT_CLASS>() as CK_ULONG,
        }];
        let mut template4 = FindTemplate4::new();
        let mut data = [0x5au8; 64];
        let mut out = [0u8; 512];
        let mut handles = [0 as CK_OBJECT_HANDLE; 8];
        // SAFETY: CK_SESSION_INFO is plain data.
        let mut info: CK_SESSION_INFO = unsafe { std::mem::zeroed() };
        let mechanism = |kind: CK_MECHANISM_TYPE| CK_MECHANISM {
            mechanism: kind,
            pParameter: ptr::null_mut(),
            ulParameterLen: 0,
        };
        let mut sha256 = mechanism(CKM_SHA256 as CK_MECHANISM_TYPE);
        let mut sha256_rsa = mechanism(CKM_SHA256_RSA_PKCS as CK_MECHANISM_TYPE);
        let mut ecdsa = mechanism(CKM_ECDSA as CK_MECHANISM_TYPE);
        let started = Instant::now();
        // Paced: bursts of one millisecond's worth, each started on schedule.
        let burst = pace.map_or(u64::MAX, |rate| ((rate / 1000.0) as u64).max(1));
        for i in 0..n {
            if let Some(rate) = pace
                && i % burst == 0
            {
                let due = started + std::time::Duration::from_secs_f64(i as f64 / rate);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            let mut out_len = out.len() as CK_ULONG;
            let rv = match op {
                Op::SessionInfo => p11!(module, C_GetSessionInfo(session, &mut info)),
                Op::Random => p11!(module, C_GenerateRandom(session, out.as_mut_ptr(), 32)),
                Op::Digest => {
                    check(
                        p11!(module, C_DigestInit(session, &mut sha256)),
                        "C_DigestInit",
                    )?;
                    p11!(
                        module,
                        C_Digest(
                            session,
                            data.as_mut_ptr(),
                            64,
                            out.as_mut_ptr(),
                            &mut out_len
                        )
                    )
                }
                Op::Find => {
                    check(
                        p11!(
                            module,
                            C_FindObjectsInit(session, find_template.as_mut_ptr(), 1)
                        ),
                        "C_FindObjectsInit",
                    )?;
                    let mut count: CK_ULONG = 0;
                    let rv = p11!(
                        module,
                        C_FindObjects(session, handles.as_mut_ptr(), 8, &mut count)
                    );
                    check(rv, "C_FindObjects")?;
                    p11!(module, C_FindObjectsFinal(session))
                }
                Op::FindTemplate => {
                    let mut template = template4.attributes();
                    check(
                        p11!(
                            module,
                            C_FindObjectsInit(
                                session,
                                template.as_mut_ptr(),
                                template.len() as CK_ULONG
                            )
                        ),
                        "C_FindObjectsInit",
                    )?;
                    p11!(module, C_FindObjectsFinal(session))
                }
                Op::SignRsa | Op::SignEc => {
                    let (mechanism, key, len) = if op == Op::SignRsa {
                        (&mut sha256_rsa, keys.rsa, 64)
                    } else {
                        (&mut ecdsa, keys.ec, 32)
                    };
                    check(
                        p11!(module, C_SignInit(session, mechanism, key)),
                        "C_SignInit",
                    )?;
                    p11!(
                        module,
                        C_Sign(
                            session,
                            data.as_mut_ptr(),
                            len,
                            out.as_mut_ptr(),
                            &mut out_len
                        )
                    )
                }
            };
            check(rv, op.label())?;
        }
        Ok(started.elapsed().as_nanos())
    }
}

/// The values of the 4-attribute template of [`Op::FindTemplate`]: the EC bench key's class, key
/// type, token flag and label (three allowlisted scalars and one label, as `pkcs11-tool` sends).
struct FindTemplate4 {
    class: CK_OBJECT_CLASS,
    key_type: CK_KEY_TYPE,
    token: CK_BBOOL,
    label: [u8; EC_LABEL.len()],
}

impl FindTemplate4 {
    fn new() -> FindTemplate4 {
        let mut label = [0u8; EC_LABEL.len()];
        label.copy_from_slice(EC_LABEL.as_bytes());
        FindTemplate4 {
            class: CKO_PRIVATE_KEY as CK_OBJECT_CLASS,
            key_type: CKK_EC as CK_KEY_TYPE,
            token: CK_TRUE as CK_BBOOL,
            label,
        }
    }

    /// The template, pointing into `self`.
    fn attributes(&mut self) -> [CK_ATTRIBUTE; 4] {
        let attribute = |kind: CK_ATTRIBUTE_TYPE, value: *mut u8, len: usize| CK_ATTRIBUTE {
            type_: kind,
            pValue: value.cast(),
            ulValueLen: len as CK_ULONG,
        };
        [
            attribute(
                CKA_CLASS,
                (&raw mut self.class).cast(),
                size_of::<CK_OBJECT_CLASS>(),
            ),
            attribute(
                CKA_KEY_TYPE,
                (&raw mut self.key_type).cast(),
                size_of::<CK_KEY_TYPE>(),
            ),
            attribute(CKA_TOKEN, &raw mut self.token, 1),
            attribute(CKA_LABEL, self.label.as_mut_ptr(), self.label.len()),
        ]
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let module = &self.module;
        p11!(module, C_CloseSession(self.handle));
        module.finalize();
    }
}

struct Keys {
    rsa: CK_OBJECT_HANDLE,
    ec: CK_OBJECT_HANDLE,
}

/// What one client process does.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The module to load (a real token, pkcs11-spy.so, or the shim).
    #[arg(long)]
    pub module: std::path::PathBuf,
    /// Label of the token to use.
    #[arg(long)]
    pub label: String,
    /// User PIN of that token.
    #[arg(long)]
    pub pin: String,
    /// Operations to time, in order.
    #[arg(long, value_delimiter = ',', required = true)]
    pub ops: Vec<Op>,
    /// Timed batches per operation.
    #[arg(long, default_value_t = 5)]
    pub batches: u32,
    /// Operations per batch: exactly this many (instead of each operation's own size × scale).
    #[arg(long)]
    pub ops_per_batch: Option<u64>,
    /// Multiplies each operation's own batch size.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Untimed operations before the first batch (caches, lazy initialisation).
    #[arg(long)]
    pub warmup: Option<u64>,
    /// At most this many operations per second (default: as fast as possible).
    #[arg(long, value_name = "OPS")]
    pub rate: Option<f64>,
    /// Runs the whole --ops list this many times, interleaving its operations (a mix:
    /// `--ops find,sign-ec --ops-per-batch 1 --batches 1 --repeat 10000`); each operation's
    /// line then holds batches × repeat values.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub repeat: u64,
}

/// Runs the client; prints one [`Timing`] line per operation.
pub fn run(args: &ClientArgs) -> Result<()> {
    let session = Session::open(&args.module, &args.label, &args.pin)?;
    let needs_keys = args
        .ops
        .iter()
        .any(|op| matches!(op, Op::SignRsa | Op::SignEc));
    let keys = if needs_keys {
        Keys {
            rsa: session.private_key(RSA_LABEL)?,
            ec: session.private_key(EC_LABEL)?,
        }
    } else {
        Keys { rsa: 0, ec: 0 }
    };
    let mut timings: Vec<Timing> = args
        .ops
        .iter()
        .map(|&op| Timing {
            op,
            ns_per_op: Vec::with_capacity(args.batches as usize),
        })
        .collect();
    for round in 0..args.repeat {
        for timing in &mut timings {
            let op = timing.op;
            let per_batch = args
                .ops_per_batch
                .unwrap_or_else(|| ((op.batch() as f64 * args.scale).round() as u64).max(1));
            let warmup = args.warmup.unwrap_or(per_batch / 10);
            if warmup > 0 && round == 0 {
                session.time(op, warmup, &keys, None)?;
            }
            for _ in 0..args.batches {
                let elapsed = session.time(op, per_batch, &keys, args.rate)?;
                timing.ns_per_op.push(elapsed as f64 / per_batch as f64);
            }
        }
    }
    for timing in &timings {
        println!("{}", serde_json::to_string(timing)?);
    }
    Ok(())
}
