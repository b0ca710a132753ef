//! Lexing the spy's lines: record headers, stamp lines, hex dumps, lines glued onto others
//! (`Returned:`, stamps and `[in]`/`[out]` anywhere outside quotes), and the values of arguments.

pub(super) use crate::common::parse_number;
use crate::common::{PrintedTime, printed_time};

/// Whether the start of a file looks like a pkcs11-spy log.
pub fn looks_like_spy(head: &str) -> bool {
    head.contains("OpenSC PKCS#11 spy")
        || head.lines().take(200).any(|line| {
            header(line).is_some_and(|(_, name)| name.starts_with("C_"))
                || super::inline::inline_header(line).is_some()
        }) && head.contains("Returned:  ")
}

const HEXDUMP_WIDTH: usize = 79;

/// `N: C_Function` (the name may lack `C_`, as old spies print `SetOperationState`).
pub(super) fn header(line: &str) -> Option<(i64, &str)> {
    let (number, name) = numbered(line)?;
    let name = name.trim_end();
    if name.is_empty()
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        || name.starts_with(|c: char| c.is_ascii_digit())
    {
        return None;
    }
    Some((number.parse().ok()?, name))
}

/// `N: rest` with N at most 12 digits: the number and what follows `": "`. (The first `": "`
/// of the line, as a split would find, since digits hold no `:`; no searcher is built per line.)
pub(super) fn numbered(line: &str) -> Option<(&str, &str)> {
    let digits = line.bytes().take(13).take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 12 {
        return None;
    }
    line[digits..]
        .strip_prefix(": ")
        .map(|rest| (&line[..digits], rest))
}

pub(super) fn is_hex_upper(b: u8) -> bool {
    b.is_ascii_digit() || (b'A'..=b'F').contains(&b)
}

/// `    %08X  XX XX … ` hex dump line: returns its bytes and whatever was glued after it.
pub(crate) fn hexdump(line: &str) -> Option<(Vec<u8>, &str)> {
    let bytes = line.as_bytes();
    if bytes.len() < 14
        || !bytes.starts_with(b"    ")
        || !bytes[4..12].iter().all(|&b| is_hex_upper(b))
        || &bytes[12..14] != b"  "
    {
        return None;
    }
    let hex_end = bytes.len().min(14 + 48);
    let mut data = Vec::with_capacity(16);
    let mut i = 14;
    while i + 1 < hex_end && is_hex_upper(bytes[i]) && is_hex_upper(bytes[i + 1]) {
        data.push(u8::from_str_radix(&line[i..i + 2], 16).ok()?);
        i += 3;
    }
    let tail = if bytes.len() > HEXDUMP_WIDTH && line.is_char_boundary(HEXDUMP_WIDTH) {
        &line[HEXDUMP_WIDTH..]
    } else {
        ""
    };
    Some((data, tail))
}

/// `YYYY-MM-DD HH:MM:SS.mmm` at the start of `text`.
fn stamp_at(text: &str) -> Option<PrintedTime> {
    printed_time(text, 3)
}

/// A parsed stamp line: optional pid/tid and the local time.
pub(super) struct Stamp {
    pub(super) pid: Option<i64>,
    pub(super) tid: Option<i64>,
    pub(super) local: PrintedTime,
}

pub(super) fn stamp(line: &str) -> Option<Stamp> {
    if let Some(rest) = line.strip_prefix("P:") {
        // Each field is bounded (a pid's digits, a thread id's 40 characters): a line full of
        // `P:` is scanned in linear time, not once more from every `P:` in it.
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (pid, rest) = (&rest[..digits], rest[digits..].strip_prefix("; T:")?);
        let space = rest.bytes().take(40).position(|b| b == b' ')?;
        let (tid, time) = (&rest[..space], &rest[space + 1..]);
        // Unix prints the thread id in decimal after a literal "0x"; Windows prints it bare.
        let tid = tid.strip_prefix("0x").unwrap_or(tid);
        return Some(Stamp {
            pid: pid.parse().ok(),
            tid: tid.parse().ok(),
            local: stamp_at(time.trim_end())?,
        });
    }
    let local = stamp_at(line)?;
    line[23..].trim().is_empty().then_some(Stamp {
        pid: None,
        tid: None,
        local,
    })
}

/// Where a glued line starts inside `line` (never inside single quotes), if anywhere after 0.
pub(super) fn glued_marker(line: &str) -> Option<usize> {
    // A stamp line carries its own date: it is whole (the spy ends it with a newline).
    if line.starts_with("P:") && stamp(line).is_some() {
        return None;
    }
    let bytes = line.as_bytes();
    if bytes.len() < 2 {
        return None;
    }
    if memchr::memchr(b'\'', &bytes[1..]).is_some() {
        return glued_marker_quoted(line);
    }
    // No quotes: only the bytes a marker can start at are looked at. A glued stamp is found by
    // its first `-` (`YYYY-`), so the digits elsewhere on the line cost nothing.
    let marker = memchr::memchr3_iter(b'R', b'P', b'-', &bytes[1..]).find_map(|at| {
        let i = at + 1;
        match bytes[i] {
            b'R' => line[i..].starts_with("Returned:  ").then_some(i),
            b'P' => (line[i..].starts_with("P:") && stamp(&line[i..]).is_some()).then_some(i),
            _ => {
                // `get`: the four bytes before a `-` may be part of a multi-byte character.
                let start = i.checked_sub(4).filter(|&s| s >= 1)?;
                (!bytes[start - 1].is_ascii_digit() && stamp_at(line.get(start..)?).is_some())
                    .then_some(start)
            }
        }
    });
    let argument = if line.starts_with("[in] ") {
        memchr::memchr_iter(b'[', &bytes[1..])
            .map(|at| at + 1)
            .find(|&i| line[i..].starts_with("[out] ") || line[i..].starts_with("[in] "))
    } else {
        None
    };
    match (marker, argument) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// [`glued_marker`] for a line with single quotes: byte by byte, tracking the quoted text.
fn glued_marker_quoted(line: &str) -> Option<usize> {
    let bytes = line.as_bytes();
    let mut quoted = false;
    for i in 1..bytes.len() {
        match bytes[i] {
            b'\'' => quoted = !quoted,
            _ if quoted => {}
            b'R' if line[i..].starts_with("Returned:  ") => return Some(i),
            b'P' if line[i..].starts_with("P:") && stamp(&line[i..]).is_some() => return Some(i),
            b'0'..=b'9' if !bytes[i - 1].is_ascii_digit() && stamp_at(&line[i..]).is_some() => {
                return Some(i);
            }
            b'[' if line.starts_with("[in] ")
                && (line[i..].starts_with("[out] ") || line[i..].starts_with("[in] ")) =>
            {
                return Some(i);
            }
            _ => {}
        }
    }
    None
}

/// `addr / len` of a buffer or attribute (`len` may be -1), or `NULL [size : 0xN (N)]`.
pub(crate) fn buffer_len(value: &str) -> Option<(bool, i64)> {
    let value = value.trim();
    if let Some(rest) = value.strip_prefix("NULL [size : ") {
        let decimal = rest.split_once('(')?.1.split_once(')')?.0;
        return Some((true, decimal.trim().parse().ok()?));
    }
    let (address, len) = value.split_once(" / ")?;
    let null = address.trim().bytes().all(|b| b == b'0');
    if !address.trim().bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((null, len.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hexdump_lines_keep_their_ascii_column_and_release_glued_tails() {
        let line = "    00000000  3A 3D 20 7F 52 65 74 75 72 6E 65 64 3A 20 20 30  := \u{7f}Returned:  0Returned:  0 CKR_OK";
        let (bytes, tail) = hexdump(line).unwrap();
        assert_eq!(bytes.len(), 16);
        assert_eq!(bytes[3], 0x7f);
        assert_eq!(tail, "Returned:  0 CKR_OK");
        assert!(hexdump("[in] hSession = 0x1").is_none());
    }

    #[test]
    fn stamps_of_every_version_parse() {
        let old = stamp("2026-11-25 16:21:43.451").unwrap();
        assert_eq!((old.pid, old.tid), (None, None));
        let unix = stamp("P:42801; T:0x140462040723456 2026-01-13 16:13:18.382").unwrap();
        assert_eq!(
            (unix.pid, unix.tid),
            (Some(42801), Some(140_462_040_723_456))
        );
        let windows = stamp("P:1200; T:5678 2026-01-13 16:13:18.382").unwrap();
        assert_eq!(windows.tid, Some(5678));
        assert_eq!(unix.local, (2026, 1, 13, 16, 13, 18, 382));
    }

    #[test]
    fn glued_markers_are_found_outside_quotes_only() {
        assert_eq!(glued_marker("     r s aReturned:  0 CKR_OK"), Some(10));
        assert_eq!(
            glued_marker("      label:                  'Returned:  0 x'"),
            None
        );
        assert_eq!(
            glued_marker("[in] type = CKM_AES_CBC       [out] pInfo: "),
            Some(30)
        );
        assert_eq!(glued_marker("x2026-11-25 16:21:43.451"), Some(1));
        assert_eq!(
            glued_marker("P:4100; T:0x140001 2026-11-25 10:00:00.000"),
            None
        );
    }

    proptest::proptest! {
        /// The memchr scan finds what the byte-by-byte scan finds, on lines built from the
        /// pieces markers are made of (and a multi-byte character before a `-`).
        #[test]
        fn the_fast_scan_agrees_with_the_byte_by_byte_one(
            pieces in proptest::collection::vec(proptest::sample::select(&[
                "Returned:  0 CKR_OK", "Return", "P:42; T:0x7 2026-01-13 16:13:18.382", "P:",
                "2026-11-25 16:21:43.451", "x2026-", "1", "-", "[in] ", "[out] ", "[", "'", " ",
                "é-", "0x1f", "R", ":", "=",
            ][..]), 0..12),
        ) {
            let line: String = pieces.concat();
            let whole_stamp = line.starts_with("P:") && stamp(&line).is_some();
            let slow = if whole_stamp { None } else { glued_marker_quoted(&line) };
            proptest::prop_assert_eq!(glued_marker(&line), slow, "{:?}", line);
        }
    }

    #[test]
    fn numbers_before_a_colon_are_at_most_twelve_digits() {
        assert_eq!(numbered("12: C_Sign"), Some(("12", "C_Sign")));
        assert_eq!(numbered("123456789012: x"), Some(("123456789012", "x")));
        assert_eq!(numbered("1234567890123: x"), None);
        assert_eq!(numbered("12 : x"), None);
        assert_eq!(numbered(": x"), None);
        assert_eq!(numbered("1:x"), None);
    }

    #[test]
    fn headers_accept_the_spy_spellings() {
        assert_eq!(header("12: C_Sign"), Some((12, "C_Sign")));
        assert_eq!(
            header("3: SetOperationState"),
            Some((3, "SetOperationState"))
        );
        assert_eq!(header("Slot 1: x"), None);
        assert_eq!(header("      flags: 42d"), None);
    }
}
