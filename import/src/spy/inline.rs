//! The integration guide's form: a call's arguments inline in its header
//! (`7: C_Login(6, 1, <pin>, 4)`, continued over lines until its parentheses close), its outputs
//! as named lines (`Session: 6`, `Public Key: 4`, `Slot: 1262138880`, `Info: Manufacturer = …`),
//! then the same `Returned:` line as every spy log.
//!
//! Arguments are mapped by position onto the function table's arguments, through their
//! [`Role`]s: a `{Attributes: K = V; …}` template stands for the table's pointer *and* count, a
//! `{CKM_X, param, len}` mechanism for one `CK_MECHANISM_PTR`, and `&N` is an output pointer
//! whose value is `N`. A PIN (`Secret`) is never read: when a header has more arguments than
//! the function (a comma inside a PIN or label), only the arguments before the first secret and
//! the lengths after the last one are kept, never a value that could be part of a PIN.

use p11trace_record::attr::{Attr, AttrType, AttrValue, Template};
use p11trace_record::functions::Role;
use p11trace_record::names;
use p11trace_record::policy::{ValuePolicy, fixed_text_of, value_from_bytes, value_policy};

use super::Open;
use super::args::set_role;
use super::lex::parse_number;

/// The longest argument list kept while it is being read (a template over many lines).
pub(super) const MAX_ARGUMENTS_BYTES: usize = 64 << 10;

/// `N: C_Function(…` — the number, the name and what follows the opening parenthesis.
pub(super) fn inline_header(line: &str) -> Option<(i64, &str, &str)> {
    let (number, rest) = super::lex::numbered(line)?;
    let (name, arguments) = rest.split_once('(')?;
    if !name.starts_with("C_") || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    Some((number.parse().ok()?, name, arguments))
}

/// How deep `text` leaves the brackets, starting from `depth` (quotes hide brackets).
pub(super) fn depth_after(mut depth: i64, text: &str) -> i64 {
    let mut quote = None;
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"') => quote = Some('"'),
            (None, '(' | '{') => depth += 1,
            (None, ')' | '}') => depth -= 1,
            _ => {}
        }
    }
    depth
}

/// Splits `text` at `separator`s outside brackets and double quotes.
fn split_top(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i64, false, 0);
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            _ if quoted => {}
            '(' | '{' => depth += 1,
            ')' | '}' => depth -= 1,
            c if c == separator && depth == 0 => {
                parts.push(text[start..i].trim());
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(text[start..].trim());
    parts
}

/// One printed argument, as the table's arguments consume it.
enum Printed<'a> {
    /// `{Attributes: …}`: a pointer and its count.
    Template(&'a str),
    /// `{CKM_X, …}` or any other braced value: one argument.
    Braced(&'a str),
    /// `&N`: an output pointer's value.
    Out(&'a str),
    Plain(&'a str),
}

fn printed(text: &str) -> Printed<'_> {
    if let Some(inner) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
        let inner = inner.trim();
        return match inner.strip_prefix("Attributes:") {
            Some(attributes) => Printed::Template(attributes.trim()),
            None if inner.is_empty() => Printed::Template(""),
            None => Printed::Braced(inner),
        };
    }
    match text.strip_prefix('&') {
        Some(value) => Printed::Out(value.trim()),
        None => Printed::Plain(text),
    }
}

/// Reads a complete argument list (`text` ends at the closing parenthesis) into `open`.
/// Returns a problem to report, if any.
pub(super) fn read_arguments(open: &mut Open, text: &str) -> Option<String> {
    let spec = open.spec?;
    let inner = text.trim_end();
    let inner = inner.strip_suffix(')').unwrap_or(inner);
    let mut values = split_top(inner, ',');
    if values.len() == 1 && values[0].is_empty() {
        values.clear();
    }
    // What each printed value stands for: the index of the table argument it fills (templates
    // fill their pointer and count).
    let mut slots = Vec::with_capacity(values.len());
    let mut j = 0;
    for value in &values {
        if j >= spec.args.len() {
            break;
        }
        slots.push(j);
        let takes_two = matches!(printed(value), Printed::Template(_))
            && spec.args[j].role == Role::Ignore
            && spec
                .args
                .get(j + 1)
                .is_some_and(|a| template_of(a.role).is_some());
        j += if takes_two { 2 } else { 1 };
    }
    let mut problem = None;
    let mut kept: Vec<(usize, &str)> = slots.iter().copied().zip(values.iter().copied()).collect();
    let secret_positions: Vec<usize> = spec
        .args
        .iter()
        .enumerate()
        .filter(|(_, a)| a.role == Role::Secret)
        .map(|(i, _)| i)
        .collect();
    if values.len() > slots.len() || (j < spec.args.len() && !values.is_empty()) {
        let message = format!(
            "{}: {} argument(s) printed, {} expected (a template `{{…}}` stands for a pointer and \
             its count)",
            open.func,
            values.len(),
            slots.len() + spec.args.len().saturating_sub(j)
        );
        problem = Some(message);
        if let (Some(&first), Some(&last)) = (secret_positions.first(), secret_positions.last()) {
            // A comma inside a PIN shifts every later argument: keep what precedes the first
            // secret, and map the tail from the end (never across a free-text label).
            kept.retain(|&(slot, _)| slot < first);
            let tail = &spec.args[last + 1..];
            if tail.iter().all(|a| a.role != Role::TokenLabel) {
                for (k, value) in values.iter().rev().take(tail.len()).enumerate() {
                    kept.push((spec.args.len() - 1 - k, value));
                }
            }
        }
    }
    for (slot, value) in kept {
        let arg = &spec.args[slot];
        let role = match spec.args.get(slot + 1) {
            Some(next) if matches!(printed(value), Printed::Template(_)) => next.role,
            _ => arg.role,
        };
        apply(open, role, value);
    }
    problem
}

fn template_of(role: Role) -> Option<Template> {
    match role {
        Role::TemplateIn => Some(Template::In),
        Role::TemplatePublic => Some(Template::Public),
        Role::TemplatePrivate => Some(Template::Private),
        Role::TemplateOut => Some(Template::Out),
        _ => None,
    }
}

fn apply(open: &mut Open, role: Role, value: &str) {
    match (role, printed(value)) {
        (Role::Secret | Role::Ignore, _) => {}
        (role, Printed::Template(attributes)) => {
            if let Some(template) = template_of(role) {
                template_attributes(open, template, attributes);
            }
        }
        (Role::Mechanism, Printed::Braced(fields)) => {
            let fields = split_top(fields, ',');
            open.record.mechanism = mechanism_code(fields[0]);
            if let Some(len) = fields.get(2).and_then(|l| parse_number(l))
                && len > 0
            {
                open.params.param_len = Some(len);
            }
        }
        (Role::Mechanism | Role::MechType, Printed::Plain(name)) => {
            open.record.mechanism = mechanism_code(name);
        }
        (Role::TokenLabel, Printed::Plain(label)) => {
            let label = label.trim_matches('"');
            open.record.attrs.get_or_insert_with(Vec::new).push(Attr {
                template: Template::In,
                kind: AttrType::Attribute(3),
                len: 32,
                value: AttrValue::Text(fixed_text_of(label.as_bytes())),
            });
        }
        (Role::User, Printed::Plain(user)) => {
            open.record.user_type = names::USER.code(user).or_else(|| parse_number(user));
        }
        (role, Printed::Out(value)) => set_role(open, role, value, false),
        // An output pointer printed as an address (`0x0`): no value to record.
        (
            Role::SessionOut
            | Role::SlotOut
            | Role::ObjectOut
            | Role::FoundObjects
            | Role::OutLen
            | Role::CountOut
            | Role::SizeOut
            | Role::FlagsOut,
            Printed::Plain(_),
        ) => {}
        (role, Printed::Plain(value)) => {
            let value = match value {
                "TRUE" | "CK_TRUE" => "1",
                "FALSE" | "CK_FALSE" => "0",
                _ => value,
            };
            set_role(open, role, value, true);
        }
        (_, Printed::Braced(_)) => {}
    }
}

fn mechanism_code(name: &str) -> Option<u64> {
    let name = name.trim();
    names::MECHANISM.code(name).or_else(|| parse_number(name))
}

/// `K = V; K = V` of one template, through the allowlist.
fn template_attributes(open: &mut Open, template: Template, attributes: &str) {
    let attrs = open.record.attrs.get_or_insert_with(Vec::new);
    for entry in split_top(attributes, ';') {
        let Some((name, value)) = entry.split_once('=') else {
            continue;
        };
        let Some(code) = names::ATTRIBUTE.code(name.trim()) else {
            continue;
        };
        let (len, value) = attribute_value(code, value.trim());
        attrs.push(Attr {
            template,
            kind: AttrType::Attribute(code),
            len,
            value,
        });
    }
}

/// An attribute's printed value → its length and what the allowlist keeps of it.
fn attribute_value(code: u64, text: &str) -> (i64, AttrValue) {
    let policy = value_policy(code);
    let bytes: Option<Vec<u8>> = match text {
        "TRUE" | "CK_TRUE" | "True" => Some(vec![1]),
        "FALSE" | "CK_FALSE" | "False" => Some(vec![0]),
        _ if text.starts_with('"') => Some(text.trim_matches('"').as_bytes().to_vec()),
        _ => named_or_number(text, policy),
    };
    match bytes {
        Some(bytes) => (bytes.len() as i64, value_from_bytes(code, &bytes)),
        None if matches!(policy, ValuePolicy::Redact) => (-1, AttrValue::Redacted),
        None => (-1, AttrValue::None),
    }
}

/// A name (`CKO_…`, `CKK_…`, `CKM_…`) or a number, as the attribute's bytes: a `CK_ULONG` for
/// numeric attributes, big-endian bytes for byte arrays (`CKA_PUBLIC_EXPONENT = 65537`), the
/// bytes themselves for `0x…` hex of a byte array.
fn named_or_number(text: &str, policy: ValuePolicy) -> Option<Vec<u8>> {
    let named = [
        &names::OBJECT_CLASS,
        &names::KEY_TYPE,
        &names::CERTIFICATE_TYPE,
        &names::MECHANISM,
    ]
    .iter()
    .filter(|_| text.starts_with("CK"))
    .find_map(|table| table.code(text));
    let ulong = matches!(policy, ValuePolicy::Number | ValuePolicy::Named(_));
    if let Some(value) = named {
        return Some(value.to_ne_bytes().to_vec());
    }
    if ulong {
        return parse_number(text).map(|v| v.to_ne_bytes().to_vec());
    }
    if let Some(hex) = text.strip_prefix("0x") {
        if hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        return (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
            .collect();
    }
    let number: u64 = text.parse().ok()?;
    let bytes = number.to_be_bytes();
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(7);
    Some(bytes[first..].to_vec())
}

/// A named output line (`Session: 6`, `Public Key: 4`, `Slot: N`, `Info: K = V`); whether it was
/// one.
pub(super) fn named_line(open: &mut Open, line: &str) -> bool {
    let Some((name, value)) = line.split_once(':') else {
        return false;
    };
    let value = value.trim();
    match name.trim() {
        "Session" => open.record.session = parse_number(value).or(open.record.session),
        "Slot" => {
            if parse_number(value).is_some() {
                *open.listed.get_or_insert(0) += 1;
            }
        }
        "Public Key" | "Private Key" | "Key" | "Object" | "New Object" => {
            if let Some(handle) = parse_number(value) {
                if let Some(found) = open.found.as_mut() {
                    // `C_FindObjects`: the handles found.
                    found.push(handle);
                    return true;
                }
                if !open.named_out {
                    open.named_out = true;
                    open.record.out_objects = None;
                }
                open.record
                    .out_objects
                    .get_or_insert_with(Vec::new)
                    .push(handle);
            }
        }
        "Info" | "Slot Info" | "Token Info" | "Mechanism Info" => {
            let Some((key, field)) = value.split_once(" = ") else {
                return true;
            };
            if let Some(key) = info_key(&open.func, key) {
                let field = field.trim().trim_matches('"');
                open.info.push((key.to_owned(), field.to_owned()));
            }
        }
        _ => return false,
    }
    true
}

/// The spy's info key for a key the guide spells in words (`Manufacturer`, `Serial Number`).
fn info_key(func: &str, key: &str) -> Option<&'static str> {
    let words: String = key
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    Some(match words.as_str() {
        "manufacturer" | "manufacturerid" => "manufacturerID",
        "description" | "librarydescription" | "slotdescription" if func == "C_GetInfo" => {
            "libraryDescription"
        }
        "description" | "slotdescription" => "slotDescription",
        "cryptokiversion" | "version" => "cryptokiVersion",
        "libraryversion" => "libraryVersion",
        "hardwareversion" => "hardwareVersion",
        "firmwareversion" => "firmwareVersion",
        "label" => "label",
        "model" => "model",
        "serial" | "serialnumber" => "serialNumber",
        "flags" => "flags",
        "minkeysize" | "ulminkeysize" => "ulMinKeySize",
        "maxkeysize" | "ulmaxkeysize" => "ulMaxKeySize",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_with_arguments_are_recognised() {
        assert_eq!(
            inline_header("2: C_GetSlotList(FALSE, 0x0, &7)"),
            Some((2, "C_GetSlotList", "FALSE, 0x0, &7)"))
        );
        assert_eq!(inline_header("2: C_GetSlotList"), None);
        assert_eq!(inline_header("Slot Info: Description = x (y)"), None);
        assert_eq!(depth_after(1, "FALSE, 0x0, &7)"), 0);
        assert_eq!(depth_after(1, "6, {CKM_RSA_PKCS_KEY_PAIR_GEN, 0x0, 0},"), 1);
        assert_eq!(depth_after(1, "\"a)(\")"), 0);
    }

    #[test]
    fn arguments_split_outside_brackets_and_quotes() {
        assert_eq!(
            split_top(
                "6, {CKM_X, 0x0, 0}, {Attributes: A = 1; B = \"x,y\"}, &4",
                ','
            ),
            vec![
                "6",
                "{CKM_X, 0x0, 0}",
                "{Attributes: A = 1; B = \"x,y\"}",
                "&4"
            ]
        );
    }

    #[test]
    fn attribute_values_follow_the_allowlist() {
        let bits = names::ATTRIBUTE.code("CKA_MODULUS_BITS").unwrap();
        assert_eq!(attribute_value(bits, "2048"), (8, AttrValue::Ulong(2048)));
        let exponent = names::ATTRIBUTE.code("CKA_PUBLIC_EXPONENT").unwrap();
        assert_eq!(
            attribute_value(exponent, "65537"),
            (3, AttrValue::Bytes(vec![1, 0, 1]))
        );
        let value = names::ATTRIBUTE.code("CKA_VALUE").unwrap();
        assert_eq!(attribute_value(value, "0x0102").1, AttrValue::Redacted);
        let token = names::ATTRIBUTE.code("CKA_TOKEN").unwrap();
        assert_eq!(attribute_value(token, "TRUE"), (1, AttrValue::Bool(true)));
    }
}
