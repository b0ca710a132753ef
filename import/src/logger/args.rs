//! A call's argument lines into columns, through each argument's [`Role`] in the function table
//! and the value allowlist: ` name: value` at the top (one space), and what is nested under it
//! (two or more spaces) — a mechanism, an info structure, `C_Initialize`'s flags, the handles
//! `C_FindObjects` found, and attribute templates between `*** Begin/End attribute template ***`.

use p11trace_record::attr::{Attr, AttrType, AttrValue, Template};
use p11trace_record::functions::Role;
use p11trace_record::names;
use p11trace_record::params::{MechParams, takes_bare_iv};
use p11trace_record::policy::value_policy;
use p11trace_record::policy::{MAX_VALUE_LEN, ValuePolicy, fixed_text_of, value_from_bytes};

use super::lex::{decimal, hex_bytes, is_pointer, pointer_or_decimal};
use super::{Call, Nested, Section};
use crate::common::{role_of, set_role};

/// Most handles recorded per `C_FindObjects` call, as the shim does; `out_len` keeps the count.
const MAX_FOUND: i64 = 4096;

/// The longest mechanism parameter whose bytes are decoded (the structures read are 12–48 bytes).
const MAX_PARAMETER_LEN: usize = 64;

/// An argument line of `call`, `indent` spaces deep, without them.
pub(super) fn argument(call: &mut Call, indent: usize, text: &str) {
    if template_line(call, indent, text) {
        return;
    }
    let (name, value) = match text.split_once(": ") {
        Some((name, value)) => (name, value.trim_end()),
        None => (text.trim_end_matches(':'), ""),
    };
    // Some functions print the mechanism's `*pParameter` one space deep, like an argument.
    if indent == 1 && name == "*pParameter" && call.nested == Nested::Mechanism {
        return mechanism_line(call, name, value);
    }
    if indent == 1 {
        top_level(call, name, value);
        return;
    }
    match call.nested {
        Nested::Mechanism => mechanism_line(call, name, value),
        Nested::Info => info_line(call, indent, name, value),
        Nested::InitArgs if name == "Flags" => call.record.ck_flags = decimal(value),
        // The logger prints the whole array (`ulMaxObjectCount` handles): the first
        // `*pulObjectCount` were found, and at most as many as the shim records.
        Nested::Found if name.starts_with("*phObject[") => {
            let count = call.record.out_len.map_or(0, |n| n.clamp(0, MAX_FOUND));
            if let (Some(found), Some(handle)) = (call.found.as_mut(), decimal(value))
                && (found.len() as i64) < count
            {
                found.push(handle);
            }
        }
        _ => {}
    }
}

/// Whether a role is an output, taken only from the `Output` section (the `Input` section
/// prints what the caller's buffers held before the call: sizes, or uninitialised handles).
fn is_output(role: Role) -> bool {
    matches!(
        role,
        Role::SessionOut
            | Role::SlotOut
            | Role::ObjectOut
            | Role::FoundObjects
            | Role::CountOut
            | Role::SizeOut
            | Role::OutLen
            | Role::FlagsOut
    )
}

/// ` name: value`: a scalar (`%lu`), a pointer (`%p`, its value follows as ` *name: value`), or
/// the count of a template that follows.
fn top_level(call: &mut Call, name: &str, value: &str) {
    call.nested = Nested::None;
    call.template = None;
    let input = call.section != Section::Output;
    let Some(role) = call.spec.and_then(|spec| role_of(spec, name)) else {
        return;
    };
    let dereferenced = name.starts_with('*');
    if !dereferenced && is_pointer(value) {
        call.nested = match role {
            Role::Mechanism if input => Nested::Mechanism,
            Role::InfoOut
            | Role::SlotInfoOut
            | Role::TokenInfoOut
            | Role::MechInfoOut
            | Role::SessionInfoOut
                if !input =>
            {
                Nested::Info
            }
            Role::InitArgs => Nested::InitArgs,
            _ => Nested::None,
        };
        return;
    }
    let template = match role {
        Role::TemplateIn => Some(Template::In),
        Role::TemplatePublic => Some(Template::Public),
        Role::TemplatePrivate => Some(Template::Private),
        // `C_GetAttributeValue`'s input template holds only types and buffer sizes.
        Role::TemplateOut if !input => Some(Template::Out),
        Role::TemplateOut => None,
        // Never read, whatever the log shows (`PKCS11_LOGGER_FLAGS` 0x08 prints PINs).
        Role::Secret => return,
        // The logger prints `pSlot` itself here, not the slot it points to.
        Role::SlotOut if call.func == "C_WaitForSlotEvent" => return,
        Role::TokenLabel if dereferenced => {
            let attr = Attr {
                template: Template::In,
                kind: AttrType::Attribute(3),
                len: 32,
                value: AttrValue::Text(fixed_text_of(value.as_bytes())),
            };
            call.record.attrs.get_or_insert_with(Vec::new).push(attr);
            return;
        }
        _ if is_output(role) && input => return,
        _ => {
            set_role(
                &mut call.record,
                &mut call.found,
                role,
                decimal(value),
                input,
            );
            if role == Role::FoundObjects && !input {
                call.nested = Nested::Found;
            }
            return;
        }
    };
    if role == Role::TemplateOut || template.is_some() {
        call.template = Some(super::TemplateBlock { template, depth: 0 });
        if template.is_some() {
            call.record.attrs.get_or_insert_with(Vec::new);
        }
    }
}

/// Lines of an attribute template; returns whether `text` was one. Nested templates (array
/// attributes such as `CKA_WRAP_TEMPLATE`) are passed over: their attribute keeps its length.
fn template_line(call: &mut Call, indent: usize, text: &str) -> bool {
    let Some(block) = call.template.as_mut() else {
        return false;
    };
    if text == "*** Begin attribute template ***" {
        block.depth = block.depth.saturating_add(1);
        return true;
    }
    if block.depth == 0 || indent < 2 {
        // A template that never began (or never ended, in a damaged log) is over.
        if block.depth > 0 {
            call.template = None;
        }
        return false;
    }
    if text == "*** End attribute template ***" {
        block.depth -= 1;
        if block.depth == 0 {
            call.template = None;
        }
        return true;
    }
    let (depth, template) = (block.depth, block.template);
    let Some(template) = template.filter(|_| depth == 1) else {
        return true;
    };
    let attrs = call.record.attrs.get_or_insert_with(Vec::new);
    if let Some(kind) = text.strip_prefix("Attribute: ") {
        if let Some(code) = decimal(kind) {
            let value = match value_policy(code) {
                ValuePolicy::Redact => AttrValue::Redacted,
                _ => AttrValue::None,
            };
            attrs.push(Attr {
                template,
                kind: AttrType::Attribute(code),
                len: -1,
                value,
            });
        }
    } else if let Some(len) = text.strip_prefix("ulValueLen: ") {
        if let (Some(attr), Some(len)) = (attrs.last_mut(), decimal(len)) {
            // `CK_UNAVAILABLE_INFORMATION` prints as 18446744073709551615: -1.
            attr.len = len as i64;
        }
    } else if let Some(value) = text.strip_prefix("*pValue: ")
        && let Some(attr) = attrs.last_mut()
        && let AttrType::Attribute(code) = attr.kind
        && !matches!(value_policy(code), ValuePolicy::Redact)
    {
        // Longer values keep their length only, as the shim's do.
        attr.value = hex_bytes(value, MAX_VALUE_LEN)
            .map_or(AttrValue::None, |bytes| value_from_bytes(code, &bytes));
    }
    true
}

/// `  mechanism: N (CKM_X)`, `  *pParameter: HEX(..)`, `  ulParameterLen: %p`.
fn mechanism_line(call: &mut Call, name: &str, value: &str) {
    match name {
        "mechanism" => call.record.mechanism = decimal(value),
        "*pParameter" => call.parameter = hex_bytes(value, MAX_PARAMETER_LEN),
        "ulParameterLen" => call.parameter_len = pointer_or_decimal(value),
        _ => {}
    }
}

/// The known parameter structures, read from the bytes the logger dumped (native byte order;
/// the word size follows from the length), else the parameter's length.
pub(super) fn mechanism_params(call: &Call) -> MechParams {
    let mut params = MechParams::default();
    let Some(mechanism) = call.record.mechanism else {
        return params;
    };
    let name = names::MECHANISM.name(mechanism).unwrap_or("");
    let words = |count: usize| -> Option<Vec<u64>> {
        let bytes = call.parameter.as_deref()?;
        let size = match bytes.len() {
            n if n == count * 8 => 8,
            n if n == count * 4 => 4,
            _ => return None,
        };
        Some(
            bytes
                .chunks_exact(size)
                .map(|word| {
                    let mut full = [0u8; 8];
                    if cfg!(target_endian = "little") {
                        full[..size].copy_from_slice(word);
                    } else {
                        full[8 - size..].copy_from_slice(word);
                    }
                    u64::from_ne_bytes(full)
                })
                .collect(),
        )
    };
    if name == "CKM_RSA_PKCS_OAEP"
        && let Some(w) = words(5)
    {
        // hashAlg, mgf, source, pSourceData (never read), ulSourceDataLen
        (params.hash, params.mgf, params.source) = (Some(w[0]), Some(w[1]), Some(w[2]));
        params.source_len = Some(w[4]);
    } else if name.ends_with("_PSS")
        && let Some(w) = words(3)
    {
        (params.hash, params.mgf, params.salt_len) = (Some(w[0]), Some(w[1]), Some(w[2]));
    } else if name == "CKM_AES_GCM"
        && let Some(w) = words(6)
    {
        // pIv, ulIvLen, ulIvBits, pAAD, ulAADLen, ulTagBits
        (params.iv_len, params.aad_len, params.tag_bits) = (Some(w[1]), Some(w[4]), Some(w[5]));
    } else if takes_bare_iv(mechanism) {
        params.iv_len = call.parameter_len;
    } else {
        params.param_len = call.parameter_len;
    }
    params
}

/// An info structure's fields (`  key: value`, versions as `  key:` then `   major: N` and
/// `   minor: N`, flags in decimal followed by one `   CKF_X: TRUE|FALSE` line each).
fn info_line(call: &mut Call, indent: usize, name: &str, value: &str) {
    if call.func == "C_GetSessionInfo" {
        // The shim keeps only the slot of a session's info.
        if indent == 2 && name == "slotID" {
            call.record.slot_id = decimal(value);
        }
        return;
    }
    if indent >= 3 {
        let Some((key, major)) = call.version.take() else {
            return;
        };
        match (name, major) {
            ("major", None) => call.version = Some((key, Some(value.to_owned()))),
            ("minor", Some(major)) => call.info.push((key, format!("{major}.{value}"))),
            _ => {}
        }
        return;
    }
    call.version = None;
    match name {
        "cryptokiVersion" | "libraryVersion" | "hardwareVersion" | "firmwareVersion" => {
            call.version = Some((name.to_owned(), None));
        }
        // The shared reader takes flags as the spy prints them: hex.
        "flags" => {
            if let Some(flags) = decimal(value) {
                call.info.push((name.to_owned(), format!("{flags:x}")));
            }
        }
        "manufacturerID" | "libraryDescription" | "slotDescription" | "label" | "model"
        | "serialNumber" | "ulMinKeySize" | "ulMaxKeySize" => {
            call.info.push((name.to_owned(), value.to_owned()));
        }
        _ => {}
    }
}
