//! The log formats this crate imports, and how to tell them apart by content (not by name).

use p11trace_dataset::Source;

/// A log format the importers read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogFormat {
    /// A pkcs11-spy plaintext log.
    Spy,
    /// observe-core JSON lines.
    Observe,
}

impl LogFormat {
    /// The `source` column of the rows imported from this format.
    pub fn source(self) -> Source {
        match self {
            LogFormat::Spy => Source::PkcsSpy,
            LogFormat::Observe => Source::ObserveJson,
        }
    }

    /// How messages name a file of this format ("is it a pkcs11-spy log file?").
    pub fn describe(self) -> &'static str {
        match self {
            LogFormat::Spy => "pkcs11-spy log",
            LogFormat::Observe => "observe JSON-lines",
        }
    }
}

/// How much of the start of a file [`sniff`] looks at.
pub const SNIFF_LEN: usize = 8192;

/// The log format the start of a file shows, if any: a JSON object first is observe, a spy
/// banner (or `N: C_…` headers with `Returned:`) is a spy log. Bytes past [`SNIFF_LEN`] are
/// ignored, so a whole file may be passed.
pub fn sniff(head: &[u8]) -> Option<LogFormat> {
    let head = &head[..head.len().min(SNIFF_LEN)];
    let text = String::from_utf8_lossy(head);
    if text.trim_start().starts_with('{') {
        return Some(LogFormat::Observe);
    }
    crate::spy::looks_like_spy(&text).then_some(LogFormat::Spy)
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
        assert_eq!(sniff(b"0: C_Initialize\n"), None);
        assert_eq!(sniff(b"PAR1\0\0"), None);
        assert_eq!(sniff(b""), None);
    }
}
