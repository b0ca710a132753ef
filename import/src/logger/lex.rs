//! Lexing pkcs11-logger lines: the `pid : tid : ` prefix, the `YYYY-MM-DD HH:MM:SS.uuuuuu - `
//! stamp, and the values the logger prints (`%lu` decimal, `%p` pointers, `HEX(..)` bytes).

use crate::common::printed_time;

/// `0x%08x : 0x%016lx : ` — the pid (10 characters) and thread id (18 characters), each optional
/// (the flags 0x02 and 0x04 leave them out). C prints a zero without its `0x` (`0000000000`).
pub(super) fn prefix(line: &str) -> (Option<i64>, Option<i64>, &str) {
    let field = |text: &str, width: usize| -> Option<(u64, usize)> {
        let bytes = text.as_bytes();
        if bytes.len() < width + 3 || &bytes[width..width + 3] != b" : " {
            return None;
        }
        let digits = match text[..width].strip_prefix("0x") {
            Some(hex) => hex,
            None if bytes[..width].iter().all(|&b| b == b'0') => "0",
            None => return None,
        };
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some((u64::from_str_radix(digits, 16).ok()?, width + 3))
    };
    let (mut pid, mut tid, mut rest) = (None, None, line);
    if let Some((value, used)) = field(rest, 10) {
        pid = Some(value as i64);
        rest = &rest[used..];
    }
    if let Some((value, used)) = field(rest, 18) {
        tid = Some(value as i64);
        rest = &rest[used..];
    }
    (pid, tid, rest)
}

/// A local time as printed: (year, month, day, hour, minute, second) and the microseconds.
pub(super) type LocalTime = ((i64, u32, u32, u32, u32, u32, u32), u32);

/// `YYYY-MM-DD HH:MM:SS.uuuuuu - text`: the local time and the text after it.
pub(super) fn stamped(rest: &str) -> Option<(LocalTime, &str)> {
    if rest.len() < 29 || !rest.is_char_boundary(29) || &rest.as_bytes()[26..29] != b" - " {
        return None;
    }
    let (year, month, day, hour, minute, second, micros) = printed_time(rest, 6)?;
    Some((
        ((year, month, day, hour, minute, second, 0), micros),
        &rest[29..],
    ))
}

/// Whether the start of a file looks like a pkcs11-logger log: its banner, or a stamped
/// `Entered C_…` / `Loading library` line, after the optional pid/tid prefix.
pub fn looks_like_logger(head: &str) -> bool {
    head.lines().take(200).any(|line| {
        let (_, _, rest) = prefix(line.trim_end_matches('\r'));
        rest.starts_with("PKCS11-LOGGER ")
            || stamped(rest).is_some_and(|(_, text)| {
                text.starts_with("Entered C_") || text.starts_with("Loading library \"")
            })
    })
}

/// A `%lu` value, the first word of the value (`1 (CKU_USER)` → 1).
pub(super) fn decimal(value: &str) -> Option<u64> {
    let word = value.split(' ').next()?;
    if word.is_empty() || !word.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    word.parse().ok()
}

/// A `%p` value: `(nil)` or `0x…`.
pub(super) fn is_pointer(value: &str) -> bool {
    value == "(nil)" || value.starts_with("0x")
}

/// A length printed with `%p` (`ulParameterLen: (nil)`, `0x20`) or `%lu`.
pub(super) fn pointer_or_decimal(value: &str) -> Option<u64> {
    if value == "(nil)" {
        return Some(0);
    }
    crate::common::parse_number(value)
}

/// The bytes of `HEX(…)`, if the value is one and holds at most `limit` bytes.
pub(super) fn hex_bytes(value: &str, limit: usize) -> Option<Vec<u8>> {
    let hex = value.strip_prefix("HEX(")?.strip_suffix(')')?;
    if !hex.len().is_multiple_of(2)
        || hex.len() / 2 > limit
        || !hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    hex.as_bytes()
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(text, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_of_every_flag_combination() {
        let line = "0x00006766 : 0x00007f0100c03840 : Input";
        assert_eq!(
            prefix(line),
            (Some(0x6766), Some(0x7f01_00c0_3840), "Input")
        );
        assert_eq!(
            prefix("0x00007f0100c03840 : Input"),
            (None, Some(0x7f01_00c0_3840), "Input")
        );
        assert_eq!(prefix("0x00006766 : Input"), (Some(0x6766), None, "Input"));
        assert_eq!(
            prefix("0000000000 : 000000000000000000 : x"),
            (Some(0), Some(0), "x")
        );
        assert_eq!(prefix(" hSession: 1"), (None, None, " hSession: 1"));
        assert_eq!(prefix("0xzz006766 : x"), (None, None, "0xzz006766 : x"));
    }

    #[test]
    fn stamps_keep_their_microseconds() {
        let (time, text) = stamped("2026-12-02 18:22:35.140586 - Entered C_Initialize").unwrap();
        assert_eq!(time, ((2026, 12, 2, 18, 22, 35, 0), 140_586));
        assert_eq!(text, "Entered C_Initialize");
        assert!(stamped("2026-12-02 18:22:35.14058 - Entered C_Initialize").is_none());
        assert!(stamped("2026-12-02 18:22:35.140586 Entered").is_none());
    }

    #[test]
    fn values_as_the_logger_prints_them() {
        assert_eq!(decimal("1 (CKU_USER)"), Some(1));
        assert_eq!(decimal("0x7ffc"), None);
        assert_eq!(pointer_or_decimal("(nil)"), Some(0));
        assert_eq!(pointer_or_decimal("0x20"), Some(32));
        assert_eq!(hex_bytes("HEX(0A0b)", 8), Some(vec![10, 11]));
        assert_eq!(hex_bytes("HEX(0A0)", 8), None);
        assert_eq!(hex_bytes("HEX(0A0B)", 1), None);
    }
}
