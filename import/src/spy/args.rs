//! Arguments by role: `[in]`/`[out]` argument lines, mechanisms and their parameters, templates
//! and attribute values, mapped to columns through each argument's
//! [`Role`] in the function table.

use p11trace_record::attr::InfoField;
use p11trace_record::attr::{Attr, AttrType, AttrValue, Template};
use p11trace_record::functions::Role;
use p11trace_record::names;
use p11trace_record::params::takes_bare_iv;
use p11trace_record::policy::{ValuePolicy, fixed_text_of, value_from_bytes, value_policy};

use super::lex::{buffer_len, is_hex_upper, parse_number};
use super::{Open, Pending, TemplateBlock};
use crate::common;

/// Completes a pending value once enough bytes arrived (or when the record moves on).
pub(crate) fn settle(open: &mut Open) {
    let finished = match &open.pending {
        Pending::None => return,
        Pending::Attribute { index, keep, bytes } => {
            let expected = open
                .record
                .attrs
                .as_ref()
                .and_then(|a| a.get(*index))
                .map_or(0, |a| a.len.max(0) as usize);
            if !*keep {
                true
            } else if bytes.len() >= expected {
                let value = value_from_bytes(
                    open.record
                        .attrs
                        .as_ref()
                        .map_or(0, |a| a[*index].kind_code()),
                    bytes,
                );
                if let Some(attr) = open.record.attrs.as_mut().and_then(|a| a.get_mut(*index)) {
                    attr.value = value;
                }
                true
            } else {
                false
            }
        }
        Pending::Buffer { role, bytes } => match *role {
            Role::TokenLabel if bytes.len() >= 32 => {
                let attr = Attr {
                    template: Template::In,
                    kind: AttrType::Attribute(3),
                    len: 32,
                    value: AttrValue::Text(fixed_text_of(bytes)),
                };
                open.record.attrs.get_or_insert_with(Vec::new).push(attr);
                true
            }
            Role::InterfaceName => {
                let text = String::from_utf8_lossy(bytes)
                    .trim_end_matches('\0')
                    .to_owned();
                let attr = Attr {
                    template: Template::In,
                    kind: AttrType::Field(InfoField::InterfaceName),
                    len: text.len() as i64,
                    value: AttrValue::Text(text),
                };
                open.record.attrs.get_or_insert_with(Vec::new).push(attr);
                true
            }
            _ => false,
        },
    };
    if finished {
        open.pending = Pending::None;
    }
}

trait KindCode {
    fn kind_code(&self) -> u64;
}

impl KindCode for Attr {
    fn kind_code(&self) -> u64 {
        match self.kind {
            AttrType::Attribute(code) => code,
            AttrType::Field(_) => u64::MAX,
        }
    }
}

pub(super) fn set_role(open: &mut Open, role: Role, value: &str, input: bool) {
    common::set_role_text(&mut open.record, &mut open.found, role, value, input);
}

/// `name = value`, `name[len] addr / N`, `name[N]: ` (template or list), `pMechanism->…`.
pub(crate) fn argument_line(open: &mut Open, argument: &str, input: bool) {
    let argument = argument.trim_end();
    if let Some(field) = argument.strip_prefix("pMechanism->") {
        return mechanism_line(open, field);
    }
    // `name = value`; the spy prints flags by name only, so `flags = ` can end the line.
    if let Some((name, value)) = argument
        .split_once(" = ")
        .or_else(|| argument.strip_suffix(" =").map(|n| (n, "")))
    {
        // `pInitArgs = 0x…` is followed by `     flags: N` (decimal), read by info_line.
        if let Some(role) = open.role(name) {
            set_role(open, role, value, input);
        }
        return;
    }
    if argument.ends_with(':') || argument.ends_with(": ") {
        // `pTemplate[N]:`, `pInfo:`, `pSlotList:`, `pMechanismList[70]:`
        let name = argument.trim_end_matches([':', ' ']);
        let (base, bracket) = match name.split_once('[') {
            Some((base, rest)) => (base, Some(rest.trim_end_matches(']'))),
            None => (name, None),
        };
        let template = open.spec.and_then(|spec| {
            let count = spec.args.iter().find(|a| a.extras.contains(&base))?;
            let which = match count.role {
                Role::TemplateIn => Template::In,
                Role::TemplatePublic => Template::Public,
                Role::TemplatePrivate => Template::Private,
                Role::TemplateOut => Template::Out,
                _ => return None,
            };
            Some((which, count.role == Role::TemplateOut))
        });
        if let Some((which, out_only)) = template {
            let skip = out_only && input;
            open.template = Some(TemplateBlock {
                template: which,
                skip,
            });
            if !skip {
                open.record.attrs.get_or_insert_with(Vec::new);
            }
        } else if base == "pMechanismList"
            && !input
            && let Some(count) = bracket.and_then(|b| b.parse::<i64>().ok())
        {
            open.record.out_len = Some(count);
        }
        return;
    }
    // `pData[ulDataLen] addr / N`, `pSignature[*pulSignatureLen] addr / N`, `pPin[ulPinLen] …`
    let Some((name, value)) = argument.split_once(' ') else {
        return;
    };
    let (base, length_name) = match name.split_once('[') {
        Some((base, rest)) => (base, rest.trim_end_matches(']')),
        None => (name, ""),
    };
    let Some((null, len)) = buffer_len(value) else {
        return;
    };
    let length_role = open.role(length_name);
    let base_role = open.role(base);
    if let Some(role) = length_role.filter(|&role| role != Role::Ignore) {
        set_role(open, role, &len.to_string(), input);
    }
    if let Some(role @ (Role::TokenLabel | Role::InterfaceName)) = base_role
        && !null
    {
        open.pending = Pending::Buffer {
            role,
            bytes: Vec::new(),
        };
    }
}

/// `pMechanism->type = CKM_X`, `pMechanism->pParameter[ulParameterLen] …`, and decoded
/// `pMechanism->pParameter->field = value` lines.
pub(crate) fn mechanism_line(open: &mut Open, field: &str) {
    if let Some(name) = field.strip_prefix("type = ") {
        open.record.mechanism = names::MECHANISM.code(name.trim());
        return;
    }
    if let Some(rest) = field.strip_prefix("pParameter[ulParameterLen] ") {
        if let Some((_, len)) = buffer_len(rest) {
            let len = len.max(0) as u64;
            match open.record.mechanism {
                Some(mechanism) if takes_bare_iv(mechanism) => open.params.iv_len = Some(len),
                _ if len > 0 => open.params.param_len = Some(len),
                _ => {}
            }
        }
        return;
    }
    let Some(parameter) = field.strip_prefix("pParameter->") else {
        return;
    };
    let (name, value) = match parameter.split_once(" = ") {
        Some((name, value)) => (name.trim(), value.trim()),
        None => match parameter.split_once(' ') {
            Some((name, value)) => (name.trim(), value.trim()),
            None => return,
        },
    };
    let number = || parse_number(value);
    let length = || buffer_len(value).map(|(_, len)| len.max(0) as u64);
    let params = &mut open.params;
    params.param_len = None;
    match name.split('[').next().unwrap_or(name) {
        "hashAlg" => params.hash = names::MECHANISM.code(value),
        "mgf" => params.mgf = names::MGF.code(value),
        "source" => params.source = names::OAEP_SOURCE.code(value).or_else(number),
        "pSourceData" => params.source_len = length(),
        "ulSourceDataLen" => params.source_len = number(),
        "sLen" => params.salt_len = number(),
        "pIv" => params.iv_len = length(),
        "ulIvLen" => params.iv_len = number(),
        "pAAD" => params.aad_len = length(),
        "ulAADLen" => params.aad_len = number(),
        "ulTagBits" => params.tag_bits = number(),
        _ => {}
    }
}

/// An attribute line of the open template: `CKA_NAME<pad> value`.
pub(crate) fn attribute_line(open: &mut Open, attribute: &str) {
    let Some(block) = open.template else { return };
    if block.skip {
        return;
    }
    let (name, value) = match attribute.strip_prefix("CKA_? (") {
        Some(rest) => {
            let (code, value) = rest.split_once(')').unwrap_or((rest, ""));
            (code.to_owned(), value)
        }
        None => {
            let end = attribute.find(' ').unwrap_or(attribute.len());
            (attribute[..end].to_owned(), &attribute[end..])
        }
    };
    let name = name.trim_end_matches(" (NSS)");
    let Some(code) = names::ATTRIBUTE.code(name) else {
        return;
    };
    let value = value.trim();
    let policy = value_policy(code);
    let mut attr = Attr {
        template: block.template,
        kind: AttrType::Attribute(code),
        len: -1,
        value: AttrValue::None,
    };
    let mut pending = None;
    if value == "True" || value == "False" {
        attr.len = 1;
        attr.value = match policy {
            ValuePolicy::Redact => AttrValue::Redacted,
            _ => AttrValue::Bool(value == "True"),
        };
    } else if let Some((null, len)) = buffer_len(value) {
        attr.len = len;
        attr.value = if matches!(policy, ValuePolicy::Redact) {
            AttrValue::Redacted
        } else {
            AttrValue::None
        };
        let readable = !null && len > 0 && !matches!(policy, ValuePolicy::Redact);
        if readable {
            pending = Some(true);
        }
    } else if value == "EMPTY" {
        attr.len = 0;
    } else if let Some(named) = [
        &names::OBJECT_CLASS,
        &names::KEY_TYPE,
        &names::CERTIFICATE_TYPE,
        &names::MECHANISM,
    ]
    .iter()
    .find_map(|table| table.code(value.split_whitespace().next().unwrap_or("")))
    {
        attr.len = 8;
        attr.value = match policy {
            ValuePolicy::Redact => AttrValue::Redacted,
            _ => AttrValue::Ulong(named),
        };
    } else if matches!(policy, ValuePolicy::Redact) {
        attr.value = AttrValue::Redacted;
    }
    let attrs = open.record.attrs.get_or_insert_with(Vec::new);
    attrs.push(attr);
    open.pending = match pending {
        Some(keep) => Pending::Attribute {
            index: attrs.len() - 1,
            keep,
            bytes: Vec::new(),
        },
        None => Pending::None,
    };
}

/// print_print (labels): a line of hex groups (`72736132 303438`), then one of spaced characters.
pub(crate) fn print_print_line(open: &mut Open, value: &str) {
    let Pending::Attribute {
        keep: true, bytes, ..
    } = &mut open.pending
    else {
        return;
    };
    let groups: Vec<&str> = value.split(' ').filter(|g| !g.is_empty()).collect();
    let is_hex = !groups.is_empty()
        && groups
            .iter()
            .all(|g| g.len() >= 2 && g.len() % 2 == 0 && g.bytes().all(is_hex_upper));
    if is_hex {
        for group in groups {
            for pair in group.as_bytes().chunks(2) {
                if let Ok(byte) = u8::from_str_radix(std::str::from_utf8(pair).unwrap_or("zz"), 16)
                {
                    bytes.push(byte);
                }
            }
        }
        settle(open);
    }
}
