//! What the importers of several log formats share: numbers as C prints them, argument names to
//! their [`Role`] in the function table, a role's value into its column, and info structures
//! (`CK_INFO`, `CK_SLOT_INFO`, `CK_TOKEN_INFO`, `CK_MECHANISM_INFO`) into the info fields the shim
//! records, with the `provider` string from `C_GetInfo`; and the local time stamp every tracer
//! prints (`YYYY-MM-DD HH:MM:SS.fff…`).

use p11trace_record::attr::InfoField;
use p11trace_record::attr::{Attr, AttrType, AttrValue};
use p11trace_record::functions::{FunctionSpec, Role};
use p11trace_record::names;
use p11trace_record::policy::provider_string;
use p11trace_record::wire::CallRecord;

/// A local time as printed: year, month, day, hour, minute, second, and the digits after the
/// point as a number (milliseconds for 3 digits, microseconds for 6).
pub(crate) type PrintedTime = (i64, u32, u32, u32, u32, u32, u32);

/// One line's text: borrowed when it is UTF-8 (`from_utf8` checks ASCII a word at a time, where
/// `from_utf8_lossy` walks it chunk by chunk), with U+FFFD for bad bytes otherwise.
pub(crate) fn line_text(line: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(line) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(line),
    }
}

/// `YYYY-MM-DD HH:MM:SS.` and `fraction` digits at the start of `text` (pkcs11-spy prints 3,
/// pkcs11-logger and libpkcs11shim 6): each field as printed, checked only to be digits.
pub(crate) fn printed_time(text: &str, fraction: usize) -> Option<PrintedTime> {
    let b = text.as_bytes();
    if b.len() < 20 + fraction {
        return None;
    }
    let shape = [
        (4, b'-'),
        (7, b'-'),
        (10, b' '),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
    ];
    if shape.iter().any(|&(at, byte)| b[at] != byte) {
        return None;
    }
    // ASCII digits only, so every range starts and ends on a character boundary.
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        b[range.clone()]
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| text[range].parse().ok())?
    };
    Some((
        i64::from(digits(0..4)?),
        digits(5..7)?,
        digits(8..10)?,
        digits(11..13)?,
        digits(14..16)?,
        digits(17..19)?,
        digits(20..20 + fraction)?,
    ))
}

pub(crate) fn parse_number(text: &str) -> Option<u64> {
    let text = text.trim();
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).ok();
    }
    if let Some(negative) = text.strip_prefix('-') {
        // Two's complement, as C prints an unsigned value cast to a signed one; `i64::MIN`
        // has no positive counterpart to negate (`--9223372036854775808`).
        return negative
            .parse::<i64>()
            .ok()
            .and_then(i64::checked_neg)
            .map(|v| v as u64);
    }
    text.parse().ok()
}

/// The role of argument `name` of `spec` (spellings accepted: `*phObject`, `hPublicKey` for
/// `phPublicKey`, `type` for the table's `type_`).
pub(crate) fn role_of(spec: &FunctionSpec, name: &str) -> Option<Role> {
    let name = name.trim_start_matches('*');
    let find = |wanted: &str| spec.args.iter().find(|a| a.name == wanted).map(|a| a.role);
    // The table spells C keywords with a trailing underscore (`type_`).
    find(name)
        .or_else(|| find(&format!("p{name}")))
        .or_else(|| find(&format!("{name}_")))
}

/// Puts the value of an argument of role `role` into its column of `record` (`number` already
/// read from the log, names resolved); `found` collects `C_FindObjects`' handles. `input`: the
/// value was printed before the call (outputs are taken only from after it).
pub(crate) fn set_role(
    record: &mut CallRecord,
    found: &mut Option<Vec<u64>>,
    role: Role,
    number: Option<u64>,
    input: bool,
) {
    match role {
        Role::Session | Role::SessionOut => record.session = number.or(record.session),
        Role::Slot | Role::SlotOut => record.slot_id = number,
        Role::Object => record.object = number,
        Role::Object2 => record.object2 = number,
        Role::Flags | Role::TokenPresent | Role::FlagsOut => record.ck_flags = number,
        Role::User => record.user_type = number,
        Role::MechType => record.mechanism = number,
        Role::InLen => record.in_len = number.map(|v| v as i64),
        Role::OutLen | Role::CountOut | Role::SizeOut | Role::OutSize | Role::SignatureLen => {
            record.out_len = number.map(|v| v as i64)
        }
        Role::ObjectOut if !input => {
            if let Some(handle) = number {
                record.out_objects.get_or_insert_with(Vec::new).push(handle);
            }
        }
        Role::FoundObjects if !input => {
            if let Some(count) = number {
                record.out_len = Some(count as i64);
                found.get_or_insert_with(Vec::new);
            }
        }
        // Read elsewhere (mechanism and info lines, templates, buffers), or never recorded. Every
        // role is named, so a role added to the table must be placed here or above.
        Role::ObjectOut
        | Role::FoundObjects
        | Role::Ignore
        | Role::Secret
        | Role::InitArgs
        | Role::Mechanism
        | Role::MessageParam
        | Role::AadLen
        | Role::TemplateIn
        | Role::TemplatePublic
        | Role::TemplatePrivate
        | Role::TemplateOut
        | Role::TokenLabel
        | Role::InterfaceName
        | Role::InfoOut
        | Role::SlotInfoOut
        | Role::TokenInfoOut
        | Role::MechInfoOut
        | Role::SessionInfoOut => {}
    }
}

/// [`set_role`] of a value as the logs print it: a number as [`parse_number`] reads it, a user
/// type or mechanism by name, and flags printed by name only (nothing left: no flags, 0).
pub(crate) fn set_role_text(
    record: &mut CallRecord,
    found: &mut Option<Vec<u64>>,
    role: Role,
    value: &str,
    input: bool,
) {
    let number = match role {
        Role::Flags if value.trim().is_empty() => Some(0),
        Role::User => names::USER.code(value.trim()),
        Role::MechType => names::MECHANISM.code(value.trim()),
        _ => parse_number(value),
    };
    set_role(record, found, role, number, input);
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
