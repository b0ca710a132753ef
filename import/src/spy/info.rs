//! Info structures (`CK_INFO`, `CK_SLOT_INFO`, `CK_TOKEN_INFO`, `CK_MECHANISM_INFO`, the slot of
//! `CK_SESSION_INFO`, `C_Initialize`'s flags) as the spy prints them, collected as `(key, value)`
//! pairs; [`crate::common::info_attrs`] turns them into the info fields the shim records.

use super::Open;

/// `      key: value` lines of an info structure (and `     flags: N` of C_Initialize).
pub(crate) fn info_line(open: &mut Open, line: &str) {
    let trimmed = line.trim();
    if trimmed.starts_with('\'') {
        // Continuation of a long quoted value (slotDescription is printed as two halves).
        if let Some(last) = open.info.last_mut() {
            last.1.push_str(trimmed.trim_matches('\''));
        }
        return;
    }
    let Some((key, value)) = trimmed.split_once(':') else {
        return;
    };
    let value = value.trim();
    if key == "flags" && open.func == "C_Initialize" {
        open.record.ck_flags = value.parse().ok();
        return;
    }
    if open.func == "C_GetSessionInfo" {
        // The shim keeps only the slot of a session's info (its hottest call never allocates).
        if key == "slotID" {
            open.record.slot_id = value.parse().ok();
        }
        return;
    }
    let value = value
        .strip_prefix('\'')
        .map_or(value, |v| v.strip_suffix('\'').unwrap_or(v));
    open.info.push((key.to_owned(), value.to_owned()));
}

/// `CKM_X : min:16 max:32 flags:0x80300 ( … )` of C_GetMechanismInfo.
pub(crate) fn mechanism_info_line(open: &mut Open, line: &str) {
    let Some((_, rest)) = line.split_once(" : ") else {
        return;
    };
    for part in rest.split_whitespace() {
        if let Some((key, value)) = part.split_once(':') {
            let key = match key {
                "min" => "ulMinKeySize",
                "max" => "ulMaxKeySize",
                // printed as 0x-prefixed hex, as the info structures' flags are (without 0x)
                "flags" => "flags",
                _ => continue,
            };
            open.info.push((key.to_owned(), value.to_owned()));
        }
    }
}
