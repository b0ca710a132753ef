//! Values as p11-kit's `log-calls` prints them: handles with their `S`/`H`/`SL` prefixes, pointers
//! to numbers (`0x7FFC… = 256`), flags with their names, counted buffers (`(4) "ab\x00c"`, cut
//! at about 120 characters with `...`), lists (`(2) [ SL1, SL2 ]`) and attribute arrays
//! (`(1) [ { CKA_LABEL = (2) "k1" } ]`).

/// A scalar in the form [`crate::common::set_role_text`] reads: `S1` → `1`, `0x7FFC… = H2` → `2`,
/// `6 = CKF_SERIAL_SESSION | …` → `6`, `CK_TRUE` → `1`, `CKM_0x00001234` → `0x00001234`.
pub(super) fn scalar(value: &str) -> Option<String> {
    let value = value.trim();
    if value == "NULL" || value.is_empty() {
        return None;
    }
    // A pointer and what it points to.
    let value = match value.split_once(" = ") {
        Some((pointer, target)) if pointer.starts_with("0x") => target.trim(),
        // A number and its flags' names.
        Some((number, _)) => number.trim(),
        None => value,
    };
    Some(match value {
        "CK_TRUE" => "1".to_owned(),
        "CK_FALSE" => "0".to_owned(),
        _ => unprefixed(value).to_owned(),
    })
}

/// A handle or slot without its prefix (`SL7` → `7`), an unknown constant as `0x…`
/// (`CKU_0x00000003`), anything else as it is.
pub(super) fn unprefixed(value: &str) -> &str {
    for prefix in ["SL", "S", "H"] {
        if let Some(digits) = value.strip_prefix(prefix)
            && !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
        {
            return digits;
        }
    }
    match value.find("_0x") {
        Some(at) if value.starts_with("CK") && at <= 4 => &value[at + 1..],
        _ => value,
    }
}

/// `(N) rest` or `(?) rest`: the count (None for `?`) and what follows it.
pub(super) fn counted(value: &str) -> Option<(Option<u64>, &str)> {
    let (count, rest) = value.trim_start().strip_prefix('(')?.split_once(')')?;
    let count = match count {
        "?" => None,
        digits => Some(digits.parse::<i64>().ok()? as u64),
    };
    Some((count, rest.strip_prefix(' ').unwrap_or(rest)))
}

/// Bytes of a printed buffer, and whether they are all of it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Printed {
    pub bytes: Vec<u8>,
    /// False when p11-kit cut the value (`...`) or it could not be read whole.
    pub whole: bool,
}

/// Reads one printed character at `text[at..]`: a `\t` `\n` `\r` `\xHH` escape or a plain byte.
fn escaped_byte(text: &[u8], at: usize) -> Option<(u8, usize)> {
    let &first = text.get(at)?;
    if first != b'\\' {
        return Some((first, 1));
    }
    match text.get(at + 1)? {
        b't' => Some((b'\t', 2)),
        b'n' => Some((b'\n', 2)),
        b'r' => Some((b'\r', 2)),
        b'x' => {
            let hex = std::str::from_utf8(text.get(at + 2..at + 4)?).ok()?;
            Some((u8::from_str_radix(hex, 16).ok()?, 4))
        }
        // A backslash of the data itself (p11-kit does not escape it).
        _ => Some((b'\\', 1)),
    }
}

/// Decodes all of `text` (escapes and plain bytes).
fn decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while let Some((byte, used)) = escaped_byte(bytes, at) {
        out.push(byte);
        at += used;
    }
    out
}

/// A quoted buffer that ends its line (arguments, mechanism parameters): `"…"` of `len` bytes,
/// maybe cut with `..."`. None when it is not a quoted string.
pub(super) fn quoted_to_end(text: &str, len: u64) -> Option<Printed> {
    let inner = text.trim_end().strip_prefix('"')?.strip_suffix('"')?;
    let bytes = decode(inner);
    if bytes.len() as u64 == len {
        return Some(Printed { bytes, whole: true });
    }
    let cut = inner.strip_suffix("...").map(decode).unwrap_or(bytes);
    Some(Printed {
        bytes: cut,
        whole: false,
    })
}

/// The items of `[ a, b ]` (empty for `[ ]`); None when it is not a list.
pub(super) fn list(text: &str) -> Option<Vec<&str>> {
    let inner = text.trim().strip_prefix('[')?.strip_suffix(']')?.trim();
    if inner.is_empty() {
        return Some(Vec::new());
    }
    Some(inner.split(", ").map(str::trim).collect())
}

/// One attribute of a printed array: its type's name and how its value was printed.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct PrintedAttr {
    pub name: String,
    pub value: AttrPrint,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum AttrPrint {
    /// `(N) "…"` (or `(N) NULL`, `(N) NOT-PRINTED`, `(-1) INVALID`: `bytes` None).
    Counted { len: i64, bytes: Option<Printed> },
    /// A named or numeric value (`CKO_PRIVATE_KEY`, `0x00000007`, `1 (…)`), `CK_ULONG` sized.
    Named(String),
}

/// The longest value p11-kit prints of an attribute before it writes `...`.
const ATTR_PRINT_LIMIT: u64 = 128;

/// Reads `"…"` of an attribute value of `len` bytes at the start of `text`, guided by the
/// length (the data's own quotes are not escaped); returns it and the rest after the quote.
fn quoted_attr(text: &str, len: u64) -> Option<(Printed, &str)> {
    let bytes = text.as_bytes();
    if bytes.first() != Some(&b'"') {
        return None;
    }
    let want = len.min(ATTR_PRINT_LIMIT);
    let mut at = 1;
    let mut out = Vec::new();
    while (out.len() as u64) < want {
        let (byte, used) = escaped_byte(bytes, at)?;
        out.push(byte);
        at += used;
    }
    let rest = text.get(at..)?;
    let (whole, rest) = match rest.strip_prefix("...\"") {
        Some(rest) if len > ATTR_PRINT_LIMIT => (false, rest),
        _ => (true, rest.strip_prefix('"')?),
    };
    Some((Printed { bytes: out, whole }, rest))
}

/// `[ { CKA_X = … }, { … } ]` (the part after `(N) `), read attribute by attribute. On a value
/// it cannot read, returns what came before and the error.
pub(super) fn attributes(text: &str) -> (Vec<PrintedAttr>, Option<String>) {
    let mut out = Vec::new();
    let Some(mut rest) = text.trim_end().strip_prefix('[') else {
        return (out, Some("an attribute array without `[`".to_owned()));
    };
    loop {
        rest = rest.trim_start_matches(' ');
        if rest == "]" {
            return (out, None);
        }
        rest = rest.strip_prefix(", ").unwrap_or(rest);
        let Some(item) = rest.strip_prefix("{ ") else {
            return (
                out,
                Some(format!("unreadable attribute at `{}`", cut(rest))),
            );
        };
        let Some((name, value)) = item.split_once(" = ") else {
            return (
                out,
                Some(format!("unreadable attribute at `{}`", cut(item))),
            );
        };
        let parsed = match counted(value) {
            Some((len, tail)) => {
                let len = len.map_or(-1, |n| n as i64);
                if let Some(after) = tail.strip_prefix("NULL") {
                    Some((AttrPrint::Counted { len, bytes: None }, after))
                } else if let Some(after) = tail.strip_prefix("NOT-PRINTED") {
                    Some((AttrPrint::Counted { len, bytes: None }, after))
                } else if let Some(after) = tail.strip_prefix("INVALID") {
                    Some((AttrPrint::Counted { len, bytes: None }, after))
                } else {
                    quoted_attr(tail, len.max(0) as u64).map(|(printed, after)| {
                        let bytes = Some(printed);
                        (AttrPrint::Counted { len, bytes }, after)
                    })
                }
            }
            // Named values hold no spaces but `1 (CKC_…)` does: up to the closing ` }`.
            None => value
                .find(" }")
                .map(|end| (AttrPrint::Named(value[..end].to_owned()), &value[end..])),
        };
        let Some((value, after)) = parsed else {
            return (out, Some(format!("unreadable value of {name}")));
        };
        let Some(after) = after.strip_prefix(" }") else {
            return (out, Some(format!("unreadable value of {name}")));
        };
        out.push(PrintedAttr {
            name: name.to_owned(),
            value,
        });
        rest = after;
    }
}

/// The start of `text`, for a message.
fn cut(text: &str) -> &str {
    let end = text
        .char_indices()
        .nth(40)
        .map_or(text.len(), |(index, _)| index);
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_lose_their_prefixes_pointers_and_names() {
        assert_eq!(scalar("S1").as_deref(), Some("1"));
        assert_eq!(scalar("SL349734553").as_deref(), Some("349734553"));
        assert_eq!(scalar("0x7FFCEE281BE8 = H2").as_deref(), Some("2"));
        assert_eq!(
            scalar("6 = CKF_SERIAL_SESSION | CKF_RW_SESSION").as_deref(),
            Some("6")
        );
        assert_eq!(scalar("CK_FALSE").as_deref(), Some("0"));
        assert_eq!(scalar("CKM_0x80001234").as_deref(), Some("0x80001234"));
        assert_eq!(scalar("CKU_USER").as_deref(), Some("CKU_USER"));
        assert_eq!(scalar("NULL"), None);
    }

    #[test]
    fn buffers_know_when_they_were_cut() {
        let pin = quoted_to_end("\"1234\"", 4).unwrap();
        assert_eq!((pin.bytes.len(), pin.whole), (4, true));
        let binary = quoted_to_end("\"\\x00\\t\\xFFa\"", 4).unwrap();
        assert_eq!(binary.bytes, vec![0, 9, 0xff, b'a']);
        let long = quoted_to_end("\"abcdef...\"", 300).unwrap();
        assert_eq!((long.bytes, long.whole), (b"abcdef".to_vec(), false));
        // Data that itself ends with three dots is whole when its length says so.
        let dots = quoted_to_end("\"ab...\"", 5).unwrap();
        assert!(dots.whole);
        assert_eq!(counted("(70) NO-VALUES"), Some((Some(70), "NO-VALUES")));
        assert_eq!(counted("(?) NOTHING"), Some((None, "NOTHING")));
    }

    #[test]
    fn attribute_arrays_read_by_length() {
        let (attrs, error) = attributes(
            "[ { CKA_CLASS = CKO_PRIVATE_KEY }, { CKA_LABEL = (4) \"a\" }\" }, { CKA_ID = (1) NULL }, \
             { CKA_VALUE = (32) NOT-PRINTED }, { CKA_X = (-1) INVALID }, { CKA_CERTIFICATE_CATEGORY = 2 (CK_CERTIFICATE_CATEGORY_AUTHORITY) } ]",
        );
        assert_eq!(error, None);
        assert_eq!(attrs.len(), 6);
        assert_eq!(attrs[0].value, AttrPrint::Named("CKO_PRIVATE_KEY".into()));
        let AttrPrint::Counted {
            len: 4,
            bytes: Some(label),
        } = &attrs[1].value
        else {
            panic!("{:?}", attrs[1]);
        };
        assert_eq!(label.bytes, b"a\" }".to_vec());
        assert_eq!(
            attrs[4].value,
            AttrPrint::Counted {
                len: -1,
                bytes: None
            }
        );
        let long = format!("[ {{ CKA_ID = (200) \"{}...\" }} ]", "\\x01".repeat(128));
        let (attrs, error) = attributes(&long);
        assert_eq!(error, None);
        let AttrPrint::Counted {
            bytes: Some(id), ..
        } = &attrs[0].value
        else {
            panic!()
        };
        assert!(!id.whole && id.bytes.len() == 128);
        let (attrs, error) = attributes("[ { CKA_LABEL = (9) \"ab\" } ]");
        assert!(attrs.is_empty() && error.is_some());
    }
}
