//! One printed argument (`  IN: name = value` or ` OUT: name = value`, with the lines of its
//! `{ … }` block) into the columns of its call, by the argument's [`Role`] in the function table:
//! scalars through the spy's [`set_role`], buffers and lists by their printed count, templates
//! through the allowlist, info structures into the same info fields the shim records.

use p11trace_record::attr::{Attr, AttrType, AttrValue, Template};
use p11trace_record::functions::{FunctionSpec, Role};
use p11trace_record::names;
use p11trace_record::policy::{ValuePolicy, fixed_text_of, value_from_bytes, value_policy};

use super::Call;
use super::params::mechanism_params;
use super::values::{AttrPrint, attributes, counted, list, quoted_to_end, scalar, unprefixed};
use crate::common::{parse_number, set_role_text as set_role};

/// One argument as printed, its block's lines included.
#[derive(Debug, Default)]
pub(super) struct Arg {
    pub line: u64,
    pub input: bool,
    pub name: String,
    pub value: String,
    /// The `\tkey: value` lines of a `{ … }` block.
    pub block: Vec<String>,
}

/// How an argument's name is compared with the table's: Hungarian prefixes and underscores
/// dropped, lower case (p11-kit 0.26 prints the 3.0 functions' arguments in snake case:
/// `user_type` is `userType`, `object_count` is `pulObjectCount`).
fn key(name: &str) -> String {
    let name = name.trim_end_matches('_');
    let bare = ["ph", "pul", "ul", "h", "p"]
        .iter()
        .find_map(|prefix| {
            name.strip_prefix(prefix)
                .filter(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
        })
        .unwrap_or(name);
    bare.chars()
        .filter(|&c| c != '_')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Where p11-kit's name for an argument differs from the table's beyond spelling.
const ALIASES: &[(&str, &str, &str)] = &[("C_DeriveKey", "phObject", "phKey")];

/// The index of argument `name` in `spec`.
fn position(spec: &FunctionSpec, name: &str) -> Option<usize> {
    let name = ALIASES
        .iter()
        .find(|(func, from, _)| *func == spec.name && *from == name)
        .map_or(name, |(_, _, to)| to);
    let wanted = key(name);
    spec.args.iter().position(|a| key(a.name) == wanted)
}

/// The role that takes the printed count of buffer or list argument `index`: an argument naming
/// it (`out_len(pSignature)`, `template_in(pTemplate)`), else the one after it (`ulDataLen`).
fn count_role(spec: &FunctionSpec, index: usize) -> Option<Role> {
    let name = spec.args.get(index)?.name;
    spec.args
        .iter()
        .find(|a| a.extras.contains(&name))
        .or_else(|| spec.args.get(index + 1))
        .map(|a| a.role)
}

/// Roles whose value only exists after the call: p11-kit prints some of them on the way in
/// (`IN: pulCount = 0x… = <whatever the caller left there>`), which is not what was returned.
fn is_output(role: Role) -> bool {
    matches!(
        role,
        Role::CountOut
            | Role::OutLen
            | Role::SizeOut
            | Role::SessionOut
            | Role::SlotOut
            | Role::FlagsOut
            | Role::ObjectOut
            | Role::FoundObjects
    )
}

/// Fills `call`'s columns from `arg`. Returns a problem to report, if the value is unreadable.
pub(super) fn apply(call: &mut Call, arg: &Arg) -> Option<String> {
    let spec = call.spec?;
    let index = position(spec, &arg.name)?;
    let role = spec.args[index].role;
    let value = arg.value.trim();
    match role {
        Role::Mechanism => return mechanism(call, arg),
        Role::InfoOut | Role::SlotInfoOut | Role::TokenInfoOut | Role::MechInfoOut => {
            info(call, arg);
            return None;
        }
        Role::SessionInfoOut => {
            let slot = field(&arg.block, "slotID").map(unprefixed);
            call.record.slot_id = slot.and_then(parse_number);
            return None;
        }
        // p11-kit prints only the name of CKF_OS_LOCKING_OK, never the flags' number.
        Role::InitArgs => return None,
        Role::TokenLabel => {
            if let Some(text) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                let label: Vec<u8> = text.bytes().take(32).collect();
                call.record.attrs.get_or_insert_with(Vec::new).push(Attr {
                    template: Template::In,
                    kind: AttrType::Attribute(3),
                    len: 32,
                    value: AttrValue::Text(fixed_text_of(&label)),
                });
            }
            return None;
        }
        _ => {}
    }
    // A counted buffer, list or template: `(N) …`.
    if let Some((count, rest)) = counted(value) {
        if let Some(template) = template_of(spec, index) {
            return self::template(call, template, count, rest, arg.input);
        }
        if let (Some(count), Some(role)) = (count, count_role(spec, index))
            && !(arg.input && is_output(role))
        {
            set_role(
                &mut call.record,
                &mut call.found,
                role,
                &count.to_string(),
                arg.input,
            );
        }
        // `C_FindObjects`' handles.
        if role == Role::Ignore
            && count_role(spec, index) == Some(Role::FoundObjects)
            && !arg.input
            && let Some(items) = list(rest)
        {
            let found = call.found.get_or_insert_with(Vec::new);
            found.extend(items.iter().filter_map(|h| parse_number(unprefixed(h))));
        }
        return None;
    }
    if arg.input && is_output(role) {
        return None;
    }
    if let Some(scalar) = scalar(value) {
        set_role(&mut call.record, &mut call.found, role, &scalar, arg.input);
    }
    None
}

/// The template (and whether it is `C_GetAttributeValue`'s output) a count argument names.
fn template_of(spec: &FunctionSpec, index: usize) -> Option<Template> {
    let name = spec.args.get(index)?.name;
    let count = spec.args.iter().find(|a| a.extras.contains(&name))?;
    Some(match count.role {
        Role::TemplateIn => Template::In,
        Role::TemplatePublic => Template::Public,
        Role::TemplatePrivate => Template::Private,
        Role::TemplateOut => Template::Out,
        _ => return None,
    })
}

/// The code of an attribute type as p11-kit names it (`CKA_0x…` when unknown).
fn attribute_code(name: &str) -> Option<u64> {
    names::ATTRIBUTE.code(unprefixed(name))
}

/// An attribute whose value p11-kit did not print (input templates print types only).
fn unseen(template: Template, code: u64, len: i64) -> Attr {
    let value = match value_policy(code) {
        ValuePolicy::Redact => AttrValue::Redacted,
        _ => AttrValue::None,
    };
    Attr {
        template,
        kind: AttrType::Attribute(code),
        len,
        value,
    }
}

/// `(N) [ CKA_X, … ]` (types) or `(N) [ { CKA_X = value }, … ]` (values, after the call).
fn template(
    call: &mut Call,
    template: Template,
    _count: Option<u64>,
    rest: &str,
    input: bool,
) -> Option<String> {
    if rest.trim() == "NONE" {
        return None;
    }
    if input {
        let Some(items) = list(rest) else {
            return Some("unreadable attribute list".to_owned());
        };
        // Types only, lengths unknown (`C_GenerateKeyPair` has two templates).
        let attrs = call.record.attrs.get_or_insert_with(Vec::new);
        attrs.extend(
            items
                .iter()
                .filter_map(|name| attribute_code(name))
                .map(|code| unseen(template, code, -1)),
        );
        return None;
    }
    let (printed, problem) = attributes(rest);
    let mut attrs = Vec::with_capacity(printed.len());
    for attr in printed {
        let Some(code) = attribute_code(&attr.name) else {
            continue;
        };
        attrs.push(match attr.value {
            AttrPrint::Named(text) => {
                let number = [
                    &names::OBJECT_CLASS,
                    &names::KEY_TYPE,
                    &names::CERTIFICATE_TYPE,
                ]
                .iter()
                .find_map(|table| table.code(&text))
                .or_else(|| parse_number(text.split(' ').next().unwrap_or("")));
                let mut attr = unseen(template, code, 8);
                if let Some(number) = number {
                    attr.value = value_from_bytes(code, &number.to_ne_bytes());
                }
                attr
            }
            AttrPrint::Counted { len, bytes } => {
                let mut attr = unseen(template, code, len);
                // The shim shows no value for an empty one either.
                if let Some(printed) = bytes.filter(|p| p.whole && !p.bytes.is_empty()) {
                    attr.value = value_from_bytes(code, &printed.bytes);
                }
                attr
            }
        });
    }
    // The values replace the types printed on the way in.
    let kept = call.record.attrs.take().unwrap_or_default();
    let mut all: Vec<Attr> = kept
        .into_iter()
        .filter(|a| a.template != template)
        .collect();
    all.extend(attrs);
    call.record.attrs = Some(all);
    problem
}

/// `\tkey: value` of a block.
fn field<'a>(block: &'a [String], key: &str) -> Option<&'a str> {
    block.iter().find_map(|line| {
        let (k, v) = line.trim().split_once(':')?;
        (k == key).then(|| v.trim())
    })
}

/// `{ mechanism: CKM_X, pParameter: (N) "…" }`.
fn mechanism(call: &mut Call, arg: &Arg) -> Option<String> {
    let name = field(&arg.block, "mechanism")?;
    let code = names::MECHANISM.code(unprefixed(name));
    call.record.mechanism = code;
    let (len, bytes) = match field(&arg.block, "pParameter").and_then(counted) {
        Some((Some(len), "NULL")) => (len, None),
        Some((Some(len), rest)) => (len, quoted_to_end(rest, len)),
        _ => return Some("unreadable mechanism parameter".to_owned()),
    };
    let params = code.and_then(|code| mechanism_params(code, len, bytes.as_ref()));
    call.record.mech_params = params.and_then(|p| p.render());
    None
}

/// An info structure's fields, as the spy's importer hands them to the shared info mapping:
/// strings unquoted, `flags` in hex (p11-kit prints some in decimal, with their names).
fn info(call: &mut Call, arg: &Arg) {
    for line in &arg.block {
        let Some((key, value)) = line.trim().split_once(':') else {
            continue;
        };
        let value = value.trim();
        let value = match value.strip_prefix('"') {
            Some(text) => text.strip_suffix('"').unwrap_or(text).to_owned(),
            None if key == "flags" => match flags_hex(&call.func, value) {
                Some(hex) => hex,
                None => continue,
            },
            None => value.to_owned(),
        };
        call.info.push((key.to_owned(), value));
    }
}

/// An info structure's flags as hex: `CK_INFO` and `CK_MECHANISM_INFO` print `%lX`, the slot
/// and token infos `%lu` (the token's twice over when no flag has a name: `00`).
fn flags_hex(func: &str, value: &str) -> Option<String> {
    let (number, names) = match value.split_once(" = ") {
        Some((number, _)) => (number.trim(), true),
        None => (value.trim(), false),
    };
    if matches!(func, "C_GetInfo" | "C_GetMechanismInfo") {
        return Some(number.to_owned());
    }
    if !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let half = number.len() / 2;
    let number = if !names && number.len() % 2 == 0 && number[..half] == number[half..] {
        &number[..half]
    } else {
        number
    };
    number.parse::<u64>().ok().map(|n| format!("{n:X}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_table_across_spellings() {
        let spec = p11trace_record::Func::C_FindObjects.spec();
        assert_eq!(
            position(spec, "object").map(|i| spec.args[i].name),
            Some("phObject")
        );
        assert_eq!(
            position(spec, "max_object_count").map(|i| spec.args[i].name),
            Some("ulMaxObjectCount")
        );
        let login = p11trace_record::Func::C_LoginUser.spec();
        assert_eq!(
            position(login, "user_type").map(|i| login.args[i].name),
            Some("userType")
        );
        let mech = p11trace_record::Func::C_GetMechanismInfo.spec();
        assert_eq!(
            position(mech, "type").map(|i| mech.args[i].name),
            Some("type_")
        );
        let sign = p11trace_record::Func::C_Sign.spec();
        assert_eq!(count_role(sign, 1), Some(Role::InLen));
        assert_eq!(count_role(sign, 3), Some(Role::OutLen));
    }

    #[test]
    fn info_flags_become_hex() {
        assert_eq!(
            flags_hex("C_GetTokenInfo", "1069 = CKF_RNG").as_deref(),
            Some("42D")
        );
        assert_eq!(flags_hex("C_GetTokenInfo", "00").as_deref(), Some("0"));
        assert_eq!(
            flags_hex("C_GetSlotInfo", "1 = CKF_TOKEN_PRESENT").as_deref(),
            Some("1")
        );
        assert_eq!(flags_hex("C_GetInfo", "0").as_deref(), Some("0"));
        assert_eq!(flags_hex("C_GetTokenInfo", "é1é1"), None);
        assert_eq!(
            flags_hex("C_GetMechanismInfo", "2800 = CKF_SIGN").as_deref(),
            Some("2800")
        );
    }
}
