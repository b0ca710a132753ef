//! Lexing libpkcs11shim's lines: the tag of a line, where another line was glued on (threads
//! writing at once in consistency mode 0), timestamps, `[lap]` durations and buffer specs.

use crate::common::printed_time;
use crate::spy::lex::hexdump;

/// The tags a line starts with (`[in] ` is the shim's spelling for `pReserved`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tag {
    Cnt,
    Pid,
    Ppd,
    Tid,
    Tic,
    In,
    Out,
    Toc,
    Lap,
    Ret,
    Lib,
}

const TAGS: [(&str, Tag); 12] = [
    ("[cnt] ", Tag::Cnt),
    ("[pid] ", Tag::Pid),
    ("[ppd] ", Tag::Ppd),
    ("[tid] ", Tag::Tid),
    ("[tic] ", Tag::Tic),
    ("[in ] ", Tag::In),
    ("[in] ", Tag::In),
    ("[out] ", Tag::Out),
    ("[toc] ", Tag::Toc),
    ("[lap] ", Tag::Lap),
    ("[ret] ", Tag::Ret),
    ("[lib] ", Tag::Lib),
];

/// The tag of `line` and the rest after it.
pub(super) fn tag(line: &str) -> Option<(Tag, &str)> {
    if !line.starts_with('[') {
        return None;
    }
    TAGS.iter()
        .find_map(|&(text, tag)| line.strip_prefix(text).map(|rest| (tag, rest)))
}

/// The indent of the shim's continuation lines (attributes, dumps, info fields, lists).
pub(super) const SPACER: &str = "      ";

/// Width of a hex dump line: `      %08X  ` + 16 × `XX ` + ` ` + 16 ASCII characters.
const HEXDUMP_WIDTH: usize = 81;

/// A hex dump line (`      %08X  XX …  ascii`): its bytes and whatever was glued after it.
pub(super) fn dump(line: &str) -> Option<(Vec<u8>, &str)> {
    let inner = line.strip_prefix("  ")?;
    if !inner.starts_with("    ") {
        return None;
    }
    let (bytes, _) = hexdump(inner)?;
    let tail = if line.len() > HEXDUMP_WIDTH && line.is_char_boundary(HEXDUMP_WIDTH) {
        &line[HEXDUMP_WIDTH..]
    } else {
        ""
    };
    Some((bytes, tail))
}

/// Where another tagged line was glued into `line` (after position 0, never inside quotes).
pub(super) fn glued_at(line: &str) -> Option<usize> {
    let bytes = line.as_bytes();
    let mut quoted = false;
    for i in 1..bytes.len() {
        match bytes[i] {
            b'\'' => quoted = !quoted,
            b'[' if !quoted && tag(&line[i..]).is_some() => return Some(i),
            _ => {}
        }
    }
    None
}

/// A local time `YYYY-MM-DD HH:MM:SS.uuuuuu` (microseconds, no zone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Local {
    pub(super) date: (i64, u32, u32),
    pub(super) time: (u32, u32, u32),
    pub(super) micros: u32,
}

impl Local {
    /// Microseconds since 1970 as if the local time were UTC: differences between two stamps
    /// of one log are exact (a DST change between them aside).
    pub(super) fn naive_micros(&self) -> i64 {
        let days = p11trace_dataset::time::days_from_civil(self.date.0, self.date.1, self.date.2);
        let (hour, minute, second) = self.time;
        ((days * 24 + i64::from(hour)) * 60 + i64::from(minute)) * 60_000_000
            + i64::from(second) * 1_000_000
            + i64::from(self.micros)
    }
}

/// `[tic]`/`[toc]` values.
pub(super) fn local_time(text: &str) -> Option<Local> {
    let text = text.trim_end();
    if text.len() != 26 {
        return None;
    }
    let (year, month, day, hour, minute, second, micros) = printed_time(text, 6)?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    Some(Local {
        date: (year, month, day),
        time: (hour, minute, second),
        micros,
    })
}

/// `[lap]`'s `%ld.%06ld` (seconds, then microseconds) in microseconds; the seconds may be
/// negative when the wall clock went back during the call.
pub(super) fn lap_micros(text: &str) -> Option<i64> {
    let (seconds, micros) = text.trim().split_once('.')?;
    if micros.len() != 6 || !micros.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seconds: i64 = seconds.parse().ok()?;
    let micros: i64 = micros.parse().ok()?;
    seconds.checked_mul(1_000_000)?.checked_add(micros)
}

/// `[cnt] 0000000000000012 - C_Sign`: the counter and the function.
pub(super) fn counter(rest: &str) -> Option<(u64, &str)> {
    let (number, func) = rest.split_once(" - ")?;
    let number = number.trim();
    let func = func.trim_end();
    let name_ok = !func.is_empty()
        && func.len() <= 64
        && func.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !func.starts_with(|c: char| c.is_ascii_digit());
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) || !name_ok {
        return None;
    }
    Some((number.parse().ok()?, func))
}

/// A buffer's `<address> / <len>` (`-1 (CK_UNAVA[I]LABLE_INFORMATION)` for no length), `EMPTY`
/// or `NULL [size : …]`, as the spy's reader wants it (the shim adds the name of -1).
pub(super) fn plain_spec(value: &str) -> &str {
    match value.find(" (CK_UNAVA") {
        Some(at) => &value[..at],
        None => value,
    }
}

/// Whether `text` is a value with no argument before it (the rest of a line another thread
/// cut): a buffer spec, `EMPTY` or `NULL [size : …]`.
pub(super) fn orphan_value(text: &str) -> bool {
    let text = text.trim();
    text == "EMPTY"
        || text.starts_with("NULL [size : ")
        || text.split_once(" / ").is_some_and(|(address, _)| {
            (8..=16).contains(&address.len()) && address.bytes().all(|b| b.is_ascii_hexdigit())
        })
}

/// Buffer specs glued together (`00007f… / 6400007f… / 32`): an address is 16 hex digits, so
/// where the next ` / ` is, the previous length ends 16 characters before it.
pub(super) fn split_specs(text: &str) -> Vec<&str> {
    let mut specs = Vec::new();
    let mut rest = text.trim();
    while let Some(first) = rest.find(" / ") {
        let after = first + 3;
        match rest[after..].find(" / ") {
            Some(next) if next >= 17 && rest.is_char_boundary(after + next - 16) => {
                let cut = after + next - 16;
                specs.push(&rest[..cut]);
                rest = &rest[cut..];
            }
            _ => break,
        }
    }
    if !rest.is_empty() {
        specs.push(rest);
    }
    specs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_glued_lines() {
        assert_eq!(
            tag("[in ] hSession = 0x1"),
            Some((Tag::In, "hSession = 0x1"))
        );
        assert_eq!(
            tag("[in] pReserved = (nil)"),
            Some((Tag::In, "pReserved = (nil)"))
        );
        assert_eq!(tag("[ret] 0 CKR_OK"), Some((Tag::Ret, "0 CKR_OK")));
        assert_eq!(tag("[xyz] 1"), None);
        let line = "[in ] pData[ulDataLen] [pid] 12393";
        assert_eq!(glued_at(line), Some(23));
        assert_eq!(glued_at("      label:   '[ret] 0 x'"), None);
    }

    #[test]
    fn dumps_keep_their_width_and_release_glued_tails() {
        let line = "      00000010  5A 5A 5A 5A 5A 5A 5A 5A 5A 5A 5A 5A 5A 5A 5A 5A  \
                    ZZZZZZZZZZZZZZZZ[toc] 2026-12-02 18:28:28.605196";
        let (bytes, tail) = dump(line).unwrap();
        assert_eq!(bytes, vec![0x5a; 16]);
        assert_eq!(tail, "[toc] 2026-12-02 18:28:28.605196");
        let hidden =
            "      00000000  ** ** ** **                                      ****            ";
        assert_eq!(dump(hidden).unwrap(), (Vec::new(), ""));
        assert!(dump("      CKA_CLASS   CKO_DATA").is_none());
    }

    #[test]
    fn times_laps_and_counters() {
        let tic = local_time("2026-12-02 18:28:28.605149").unwrap();
        let toc = local_time("2026-12-02 18:28:29.000003").unwrap();
        assert_eq!(toc.naive_micros() - tic.naive_micros(), 394_854);
        assert_eq!(lap_micros("0.394854"), Some(394_854));
        assert_eq!(lap_micros("-1.999000"), Some(-1_000));
        assert_eq!(lap_micros("99999999999999999.000000"), None);
        assert!(local_time("2026-13-02 18:28:28.605149").is_none());
        assert_eq!(counter("0000000000000012 - C_Sign"), Some((12, "C_Sign")));
        assert_eq!(
            counter("0000000000000003 - SetOperationState"),
            Some((3, "SetOperationState"))
        );
        assert!(counter("00x - C_Sign").is_none());
    }

    #[test]
    fn glued_buffer_specs_come_apart() {
        assert_eq!(
            split_specs("00007fcbb8b7ba48 / 6400007fcbb8779a48 / 64"),
            vec!["00007fcbb8b7ba48 / 64", "00007fcbb8779a48 / 64"]
        );
        assert_eq!(
            split_specs("0000000000000000 / 0"),
            vec!["0000000000000000 / 0"]
        );
        assert!(orphan_value("00007fcbb8d7ca48 / 64"));
        assert!(!orphan_value("hSession = 0x1"));
        assert_eq!(
            plain_spec("0000000000000000 / -1 (CK_UNAVALABLE_INFORMATION)"),
            "0000000000000000 / -1"
        );
    }
}
