//! A record's body: libpkcs11shim renders arguments with pkcs11-spy's code, so each line is
//! handed to the spy's readers ([`crate::spy::args`], [`crate::spy::info`]) once the shim's own
//! spellings are mapped onto the spy's: `[in ] ` for `[in] `, a 6-space indent for 4,
//! `pMechanism->type=X` for `pMechanism->type = X`, bare `pIv[ulIvLen]` lines for
//! `pMechanism->pParameter->pIv`, `-1 (CK_UNAVALABLE_INFORMATION)` for `-1`.

use p11trace_record::functions::Role;
use p11trace_record::names;

use super::lex::{SPACER, plain_spec};
use crate::common::parse_number;
use crate::spy::Open;
use crate::spy::args::{attribute_line, print_print_line};
use crate::spy::info::{info_line, mechanism_info_line};

/// Mechanism parameter fields the shim prints without the `pMechanism->pParameter->` path.
const BARE_PARAMS: [&str; 5] = ["pParameter", "pIv", "pAAD", "pSourceData", "ulIvBits"];

/// The name an argument line is about (`pData` of `pData[ulDataLen] …`, `*pulCount`).
pub(super) fn argument_name(text: &str) -> &str {
    let end = text.find([' ', '=', '[', ':']).unwrap_or(text.len());
    &text[..end]
}

fn has_role(open: &Open, role: Role) -> bool {
    open.spec
        .is_some_and(|spec| spec.args.iter().any(|a| a.role == role))
}

/// Whether a record of this function prints an argument line named `name`: where the records
/// of concurrent threads interleave (mode 0), a line goes to an open record it fits. (A few
/// lines name another function's argument, `pData[ulDataLen]` in `C_EncryptUpdate`: they fit
/// none, and go where a line that fits nothing goes.)
pub(super) fn accepts(open: &Open, name: &str) -> bool {
    let Some(spec) = open.spec else {
        return true;
    };
    let base = name.trim_start_matches('*');
    let mechanism = base.starts_with("pMechanism->") || BARE_PARAMS.contains(&base);
    open.role(base).is_some()
        || spec.args.iter().any(|a| a.extras.contains(&base))
        || (mechanism && has_role(open, Role::Mechanism))
        || (open.func == "C_Initialize" && matches!(base, "flags" | "pReserved"))
}

/// `pMechanism->…` and the bare parameter lines in the spy's spelling.
fn mechanism_text(text: &str) -> Option<String> {
    let field = match text.strip_prefix("pMechanism->") {
        Some(field) => field.to_owned(),
        None => {
            let name = argument_name(text);
            if !BARE_PARAMS.contains(&name) {
                return None;
            }
            match name {
                "pParameter" => text.to_owned(),
                _ => format!("pParameter->{text}"),
            }
        }
    };
    let field = field.replace(
        "pParameter[pMechanism->ulParameterLen]",
        "pParameter[ulParameterLen]",
    );
    // `type=CKM_X`, `pParameter->hashAlg=CKM_SHA256`: the spy puts spaces around `=`.
    let field = match field.split_once('=') {
        Some((name, value)) if !name.ends_with(' ') => format!("{name} = {value}"),
        _ => field,
    };
    Some(format!("pMechanism->{field}"))
}

/// One `[in ]`/`[out]` line (its tag removed).
pub(super) fn argument(open: &mut Open, text: &str, input: bool) {
    let text = plain_spec(text.trim_end());
    if let Some(mechanism) = mechanism_text(text) {
        if has_role(open, Role::Mechanism) {
            open.argument(&mechanism, input);
        }
        return;
    }
    // `C_WaitForSlotEvent`'s `*pSlot` before the call: not the slot the call returns.
    if input && argument_name(text) == "pSlot" {
        return;
    }
    if open.func == "C_Initialize" {
        // `CK_C_INITIALIZE_ARGS.flags`, printed as its own argument.
        if let Some(value) = text.strip_prefix("flags = ") {
            open.record.ck_flags = parse_number(value);
        }
        return;
    }
    open.argument(text, input);
    if input {
        in_length_alias(open, text);
    }
}

/// `C_EncryptUpdate` prints its part as `pData[ulDataLen]`: an input buffer whose length names
/// no argument of the function is the function's input length, if it has one.
fn in_length_alias(open: &mut Open, text: &str) {
    let Some((name, value)) = text.split_once(' ') else {
        return;
    };
    let Some(length) = name
        .split_once('[')
        .map(|(_, rest)| rest.trim_end_matches(']'))
    else {
        return;
    };
    if !length.starts_with("ul") || open.role(length).is_some() || !has_role(open, Role::InLen) {
        return;
    }
    if let Some((_, len)) = crate::spy::lex::buffer_len(value) {
        open.record.in_len = Some(len);
    }
}

/// A continuation line (6-space indent or a tab): attributes, info fields, lists, mechanism
/// lines, print_print labels. Hex dumps are read before (see `super::lex::dump`).
pub(super) fn continuation(open: &mut Open, line: &str) {
    let body = line.trim_start_matches([' ', '\t']);
    if body.is_empty() {
        return;
    }
    if body.starts_with("pMechanism->") {
        return argument(open, body, true);
    }
    if body.starts_with("CKA_") && line.starts_with(SPACER) {
        return attribute_line(open, plain_spec(body));
    }
    if let Some(object) = body
        .strip_prefix("Object ")
        .and_then(|l| l.strip_suffix(" matches"))
    {
        if let Some(handle) = parse_number(object) {
            open.found_object(handle);
        }
        return;
    }
    if open.func == "C_GetMechanismInfo" && open.record.mechanism.is_none() {
        // The mechanism asked about: `%30s ` (a name), or `Unknown Mechanism (%08lx)`.
        if let Some(code) = body
            .strip_prefix("Unknown Mechanism (")
            .and_then(|rest| rest.split_once(')'))
            .and_then(|(hex, _)| u64::from_str_radix(hex, 16).ok())
        {
            open.record.mechanism = Some(code);
            return;
        }
        let name = body.trim_end();
        if !name.contains(' ') && names::MECHANISM.code(name).is_some() {
            return open.argument(&format!("type = {name}"), true);
        }
    }
    if body.contains(" : min:") {
        return mechanism_info_line(open, body);
    }
    print_print_line(open, body.trim_end());
    if body.contains(':') {
        info_line(open, line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shims_spellings_become_the_spys() {
        assert_eq!(
            mechanism_text("pMechanism->type=CKM_SHA256").as_deref(),
            Some("pMechanism->type = CKM_SHA256")
        );
        assert_eq!(
            mechanism_text("pMechanism->pParameter[pMechanism->ulParameterLen] 0000 / 0")
                .as_deref(),
            Some("pMechanism->pParameter[ulParameterLen] 0000 / 0")
        );
        assert_eq!(
            mechanism_text("pIv[ulIvLen] 00007f0000001000 / 12").as_deref(),
            Some("pMechanism->pParameter->pIv[ulIvLen] 00007f0000001000 / 12")
        );
        assert_eq!(
            mechanism_text("pMechanism->pParameter->sLen=32").as_deref(),
            Some("pMechanism->pParameter->sLen = 32")
        );
        assert_eq!(mechanism_text("hSession = 0x1"), None);
        assert_eq!(argument_name("pData[ulDataLen] 0000 / 4"), "pData");
        assert_eq!(argument_name("*pulCount = 0x2"), "*pulCount");
    }

    #[test]
    fn a_record_takes_only_its_functions_lines() {
        let sign = Open::new(1, "C_Sign");
        assert!(accepts(&sign, "hSession"));
        assert!(accepts(&sign, "pSignature"));
        assert!(!accepts(&sign, "pMechanism->type"));
        assert!(!accepts(&sign, "*phSession"));
        let init = Open::new(1, "C_DigestInit");
        assert!(accepts(&init, "pMechanism->type"));
        assert!(!accepts(&init, "pData"));
    }
}
