//! Info structures (`CK_INFO`, `CK_SLOT_INFO`, `CK_TOKEN_INFO`, `CK_MECHANISM_INFO`, the slot of
//! `CK_SESSION_INFO`, `C_Initialize`'s flags) into the info fields the shim records, and the
//! `provider` string from `C_GetInfo`.

use p11trace_record::attr::InfoField;
use p11trace_record::attr::{Attr, AttrType, AttrValue};
use p11trace_record::policy::provider_string;

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

fn version_value(text: &str) -> AttrValue {
    match text.split_once('.') {
        Some((major, minor)) => match (major.trim().parse(), minor.trim().parse()) {
            (Ok(major), Ok(minor)) => AttrValue::Version(major, minor),
            _ => AttrValue::None,
        },
        None => AttrValue::None,
    }
}

/// The order the shim records each function's info fields in.
fn info_order(func: &str) -> &'static [InfoField] {
    use InfoField::*;
    match func {
        "C_GetInfo" => &[
            CryptokiVersion,
            ManufacturerId,
            Flags,
            LibraryDescription,
            LibraryVersion,
        ],
        "C_GetSlotInfo" => &[
            SlotDescription,
            ManufacturerId,
            Flags,
            HardwareVersion,
            FirmwareVersion,
        ],
        "C_GetTokenInfo" => &[
            Label,
            ManufacturerId,
            Model,
            SerialNumber,
            Flags,
            HardwareVersion,
            FirmwareVersion,
        ],
        "C_GetMechanismInfo" => &[MinKeySize, MaxKeySize, Flags],
        _ => &[],
    }
}

/// Info fields as the shim records them (same fields, same order, same values).
pub(crate) fn info_attrs(func: &str, info: &[(String, String)]) -> Vec<Attr> {
    let field = p11trace_record::attr::info_field;
    let text = |v: &str| AttrValue::Text(v.trim_end().to_owned());
    let hex_flags = |v: &str| {
        u64::from_str_radix(v.trim().trim_start_matches("0x"), 16)
            .map_or(AttrValue::None, AttrValue::Ulong)
    };
    let mut attrs = Vec::new();
    for (key, value) in info {
        let attr = match key.as_str() {
            "cryptokiVersion" => field(InfoField::CryptokiVersion, version_value(value)),
            "manufacturerID" => field(InfoField::ManufacturerId, text(value)),
            "libraryDescription" => field(InfoField::LibraryDescription, text(value)),
            "libraryVersion" => field(InfoField::LibraryVersion, version_value(value)),
            "slotDescription" => field(InfoField::SlotDescription, text(value)),
            "hardwareVersion" => field(InfoField::HardwareVersion, version_value(value)),
            "firmwareVersion" => field(InfoField::FirmwareVersion, version_value(value)),
            "label" => field(InfoField::Label, text(value)),
            "model" => field(InfoField::Model, text(value)),
            "serialNumber" => field(InfoField::SerialNumber, text(value)),
            "flags" => field(InfoField::Flags, hex_flags(value)),
            "ulMinKeySize" => field(
                InfoField::MinKeySize,
                value.parse().map_or(AttrValue::None, AttrValue::Ulong),
            ),
            "ulMaxKeySize" => field(
                InfoField::MaxKeySize,
                value.parse().map_or(AttrValue::None, AttrValue::Ulong),
            ),
            _ => continue,
        };
        attrs.push(attr);
    }
    let order = info_order(func);
    attrs.sort_by_key(|a| match a.kind {
        AttrType::Field(field) => order.iter().position(|f| *f == field).unwrap_or(usize::MAX),
        AttrType::Attribute(_) => usize::MAX,
    });
    attrs
}

pub(crate) fn info_provider(info: &[(String, String)]) -> Option<String> {
    let get = |key: &str| info.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let version = get("libraryVersion")?.split_once('.')?;
    Some(provider_string(
        get("manufacturerID")?,
        get("libraryDescription")?,
        (version.0.parse().ok()?, version.1.parse().ok()?),
    ))
}
