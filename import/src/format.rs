//! The log formats this crate imports, and how to tell them apart by content (not by name).

use p11trace_dataset::Source;

/// A log format the importers read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogFormat {
    /// A pkcs11-spy plaintext log (every OpenSC version, and the integration guide's form).
    Spy,
    /// observe-core JSON lines.
    Observe,
    /// p11-kit's `log-calls: yes` output (stderr of a p11-kit-managed application).
    P11Kit,
    /// Pkcs11Interop's pkcs11-logger.
    Pkcs11Logger,
    /// Mastercard's libpkcs11shim.
    Pkcs11Shim,
}

impl LogFormat {
    /// Every format, in the order [`sniff`] tries them.
    pub const ALL: [LogFormat; 5] = [
        LogFormat::Observe,
        LogFormat::Pkcs11Shim,
        LogFormat::Pkcs11Logger,
        LogFormat::P11Kit,
        LogFormat::Spy,
    ];

    /// The `source` column of the rows imported from this format.
    pub fn source(self) -> Source {
        match self {
            LogFormat::Spy => Source::PkcsSpy,
            LogFormat::Observe => Source::ObserveJson,
            LogFormat::P11Kit => Source::P11KitLog,
            LogFormat::Pkcs11Logger => Source::Pkcs11Logger,
            LogFormat::Pkcs11Shim => Source::Pkcs11Shim,
        }
    }

    /// How messages name a file of this format ("is it a pkcs11-spy log file?").
    pub fn describe(self) -> &'static str {
        match self {
            LogFormat::Spy => "pkcs11-spy log",
            LogFormat::Observe => "observe JSON-lines",
            LogFormat::P11Kit => "p11-kit log-calls",
            LogFormat::Pkcs11Logger => "pkcs11-logger log",
            LogFormat::Pkcs11Shim => "libpkcs11shim log",
        }
    }

    /// Whether the start of a file looks like this format.
    fn looks_like(self, text: &str) -> bool {
        match self {
            LogFormat::Observe => text.trim_start().starts_with('{'),
            LogFormat::Spy => crate::spy::looks_like_spy(text),
            LogFormat::P11Kit => crate::p11kit::looks_like_p11kit(text),
            LogFormat::Pkcs11Logger => crate::logger::looks_like_logger(text),
            LogFormat::Pkcs11Shim => crate::pkcs11shim::looks_like_pkcs11shim(text),
        }
    }
}

/// How much of the start of a file [`sniff`] looks at.
pub const SNIFF_LEN: usize = 8192;

/// The log format the start of a file shows, if any: a JSON object first is observe, a spy
/// banner (or `N: C_…` headers with `Returned:`) is a spy log, and each other tracer by its own
/// line shapes. Bytes past [`SNIFF_LEN`] are ignored, so a whole file may be passed.
pub fn sniff(head: &[u8]) -> Option<LogFormat> {
    let head = &head[..head.len().min(SNIFF_LEN)];
    let text = String::from_utf8_lossy(head);
    LogFormat::ALL
        .into_iter()
        .find(|format| format.looks_like(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_told_apart_by_content() {
        assert_eq!(
            sniff(b"  \n{\"func\":\"C_Login\"}"),
            Some(LogFormat::Observe)
        );
        assert_eq!(
            sniff(b"\n\n*************** OpenSC PKCS#11 spy *****************\n"),
            Some(LogFormat::Spy)
        );
        assert_eq!(
            sniff(b"0: C_Initialize\n[in] pInitArgs = (nil)\nReturned:  0 CKR_OK\n"),
            Some(LogFormat::Spy)
        );
        let p11kit = b"C_Initialize\n  IN: pInitArgs = NULL\nC_Initialize = CKR_OK\n";
        assert_eq!(sniff(p11kit), Some(LogFormat::P11Kit));
        // A name alone is not enough: its `C_X = CKR_` must follow.
        assert_eq!(sniff(b"C_Initialize\n  IN: pInitArgs = NULL\n"), None);
        assert_eq!(sniff(b"0: C_Initialize\n"), None);
        // pkcs11-logger: its banner, or stamped `Entered` lines, with or without pid and tid.
        let logger = "0x00006766 : 0x00007f0100c03840 : *****\n\
                      0x00006766 : 0x00007f0100c03840 : PKCS11-LOGGER 2.3.0\n";
        assert_eq!(sniff(logger.as_bytes()), Some(LogFormat::Pkcs11Logger));
        let entered = "0x00006766 : 0x00007f0100c03840 : 2026-12-02 18:22:35.142220 - \
                       Entered C_Initialize\n";
        assert_eq!(sniff(entered.as_bytes()), Some(LogFormat::Pkcs11Logger));
        let bare = "2026-12-02 18:22:35.142220 - Entered C_Initialize\n";
        assert_eq!(sniff(bare.as_bytes()), Some(LogFormat::Pkcs11Logger));
        // A spy log whose stamps carry the same date shape is still a spy log.
        let spy = "\n0: C_Initialize\nP:42801; T:0x140462040723456 2026-01-13 16:13:18.382\n\
                   [in] pInitArgs = (nil)\nReturned:  0 CKR_OK\n";
        assert_eq!(sniff(spy.as_bytes()), Some(LogFormat::Spy));
        assert_eq!(
            sniff(b"{\"func\":\"C_Login\",\"ts\":\"2026-12-02 18:22:35.142220 - Entered C_X\"}"),
            Some(LogFormat::Observe)
        );
        // libpkcs11shim renders bodies with the spy's code (`[in] pReserved`, 6-space dumps), but
        // its records are tagged: its banner, or `[cnt]` headers with `[ret]`, tell it apart.
        let shim =
            b"\n\n************************* PKCS#11 shim library *****************************\n\
                     pid: 28703\nppid: unforked\n";
        assert_eq!(sniff(shim), Some(LogFormat::Pkcs11Shim));
        let bare = b"\n[cnt] 0000000000000001 - C_Initialize\n[pid] 1\n[ppd] 1\n[tid] 1\n\
                     [tic] 2026-12-02 18:23:13.165591\n[in ] pInitArgs = 0x7ffd\n\
                     [in] pReserved = (nil)\n[toc] 2026-12-02 18:23:13.167887\n[lap] 0.002296\n\
                     [ret] 0 CKR_OK\n";
        assert_eq!(sniff(bare), Some(LogFormat::Pkcs11Shim));
        assert_eq!(sniff(b"[cnt] 0000000000000001 - C_Initialize\n"), None);
        let spy = b"0: C_Initialize\n[in] pInitArgs = (nil)\n[ret] x\nReturned:  0 CKR_OK\n";
        assert_eq!(sniff(spy), Some(LogFormat::Spy));
        assert_eq!(sniff(b"PAR1\0\0"), None);
        assert_eq!(sniff(b""), None);
    }

    /// The committed logs of each tracer are sniffed as their own format and as no other.
    #[test]
    fn committed_logs_are_sniffed_as_their_own_format() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let logs_in = |folder: &str| -> Vec<std::path::PathBuf> {
            let mut logs: Vec<_> = std::fs::read_dir(fixtures.join(folder))
                .expect("fixture folder")
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect();
            logs.sort();
            logs
        };
        let mut spy = logs_in("corpus");
        spy.push(fixtures.join("spy-0.24-threads.log"));
        spy.extend(logs_in("guide"));
        let p11kit = logs_in("p11kit");
        assert!(spy.len() >= 7 && p11kit.len() >= 2);
        for (logs, format) in [(spy, LogFormat::Spy), (p11kit, LogFormat::P11Kit)] {
            for log in logs {
                let bytes = std::fs::read(&log).expect("readable log");
                assert_eq!(sniff(&bytes), Some(format), "{}", log.display());
                let text = String::from_utf8_lossy(&bytes[..bytes.len().min(SNIFF_LEN)]);
                for other in LogFormat::ALL.into_iter().filter(|&f| f != format) {
                    assert!(!other.looks_like(&text), "{} as {other:?}", log.display());
                }
            }
        }
        let observe = "{\"func\":\"C_Login\",\"rv\":0}\n";
        assert!(!LogFormat::P11Kit.looks_like(observe));
    }
}
