//! Key resolution: which key each call used. Object handles mean something only inside one
//! process, so handles are followed per client, in call order: what `C_FindObjectsInit`
//! searched for and `C_FindObjects` returned, what a key was created with (`C_GenerateKey(Pair)`,
//! `C_CreateObject`, `C_UnwrapKey`, `C_DeriveKey`, `C_CopyObject`), and what
//! `C_GetAttributeValue` read back (`CKA_ID`, `CKA_LABEL`, `CKA_CLASS`, `CKA_KEY_TYPE`: the
//! allowlisted attributes; hashed labels stay hashed). An operation's later calls (`C_Sign`,
//! `C_SignUpdate`, …) use the key of the last `C_XInit` of their family on their session. A
//! destroyed handle starts a new object if the module hands it out again. What is learnt later
//! about a handle still counts for its earlier uses (a process may read `CKA_ID` after signing).

use std::collections::HashMap;

/// (template, attribute type, value).
pub type Attr = (String, String, Option<String>);

/// One call, as far as key usage goes.
#[derive(Debug, Clone, Default)]
pub struct Call {
    pub client: u32,
    pub func: String,
    pub ok: bool,
    pub session: Option<i64>,
    pub object: Option<i64>,
    pub object2: Option<i64>,
    pub out_objects: Vec<i64>,
    pub mechanism: Option<String>,
    /// (template, attribute type, value) of the identifying attributes.
    pub attrs: Vec<Attr>,
}

/// What is known of one object (one handle in one process, until destroyed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Object {
    pub class: Option<String>,
    pub key_type: Option<String>,
    pub id: Option<String>,
    pub label: Option<String>,
}

impl Object {
    fn learn(&mut self, kind: &str, value: &str) {
        let slot = match kind {
            "CKA_CLASS" => &mut self.class,
            "CKA_KEY_TYPE" => &mut self.key_type,
            "CKA_ID" => &mut self.id,
            "CKA_LABEL" => &mut self.label,
            _ => return,
        };
        slot.get_or_insert_with(|| value.to_owned());
    }

    fn merge(&mut self, other: &Object) {
        for (slot, value) in [
            (&mut self.class, &other.class),
            (&mut self.key_type, &other.key_type),
            (&mut self.id, &other.id),
            (&mut self.label, &other.label),
        ] {
            if slot.is_none() {
                slot.clone_from(value);
            }
        }
    }

    /// The stable name of the key: its class and `CKA_ID`, else its class and label; `None`
    /// when neither is known (the use is counted as unresolved).
    pub fn identity(&self) -> Option<String> {
        let class = match self.class.as_deref() {
            Some("CKO_PRIVATE_KEY") => "private",
            Some("CKO_PUBLIC_KEY") => "public",
            Some("CKO_SECRET_KEY") => "secret",
            Some(other) => other,
            None => "?",
        };
        match (&self.id, &self.label) {
            (Some(id), _) => Some(format!("{class}/id={id}")),
            (None, Some(label)) => Some(format!("{class}/label={label}")),
            (None, None) => None,
        }
    }
}

/// A call that used a key (or an object handle as one).
#[derive(Debug, Clone)]
pub struct Use {
    /// Index of the call in the input order.
    pub call: usize,
    /// Index into [`Resolver::objects`]; `None` when no handle could be tied to the call.
    pub object: Option<usize>,
    /// The mechanism of the call, or of the `C_XInit` that started its operation.
    pub mechanism: Option<String>,
    /// How the key took part: `C_WrapKey` names the wrapping key `C_WrapKey` and the wrapped
    /// key `C_WrapKey (wrapped)`.
    pub role: String,
}

/// The operation family of a function that continues a `C_XInit` (`C_SignUpdate` → `Sign`).
fn family(func: &str) -> Option<&str> {
    let name = func.strip_prefix("C_")?;
    let message = [
        ("EncryptMessage", "MessageEncrypt"),
        ("DecryptMessage", "MessageDecrypt"),
        ("SignMessage", "MessageSign"),
        ("VerifyMessage", "MessageVerify"),
    ];
    for (prefix, family) in message {
        if name.starts_with(prefix) {
            return Some(family);
        }
    }
    let base = ["Init", "Update", "Final", "Begin", "Next"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name);
    const FAMILIES: &[&str] = &[
        "Encrypt",
        "Decrypt",
        "Sign",
        "SignRecover",
        "Verify",
        "VerifyRecover",
        "VerifySignature",
        "MessageEncrypt",
        "MessageDecrypt",
        "MessageSign",
        "MessageVerify",
    ];
    FAMILIES.contains(&base).then_some(base)
}

const CREATES: &[&str] = &[
    "C_CreateObject",
    "C_CopyObject",
    "C_GenerateKey",
    "C_GenerateKeyPair",
    "C_UnwrapKey",
    "C_UnwrapKeyAuthenticated",
    "C_DeriveKey",
];

/// The functions the resolver reads besides [`CREATES`] and the operation families (the audit
/// loads only these rows).
const FUNCTIONS: &[&str] = &[
    "C_FindObjectsInit",
    "C_FindObjects",
    "C_GetAttributeValue",
    "C_DestroyObject",
    "C_WrapKey",
    "C_WrapKeyAuthenticated",
    "C_DigestKey",
    "C_EncapsulateKey",
    "C_DecapsulateKey",
    "C_Login",
    "C_LoginUser",
];

/// Whether the resolver needs this function's rows.
pub fn relevant(func: &str) -> bool {
    FUNCTIONS.contains(&func) || CREATES.contains(&func) || family(func).is_some()
}

fn key_type_of(mechanism: Option<&str>) -> Option<String> {
    let mechanism = mechanism?;
    let table = [
        ("CKM_RSA_", "CKK_RSA"),
        ("CKM_EC_EDWARDS", "CKK_EC_EDWARDS"),
        ("CKM_EC_MONTGOMERY", "CKK_EC_MONTGOMERY"),
        ("CKM_EC_", "CKK_EC"),
        ("CKM_DSA_", "CKK_DSA"),
        ("CKM_DH_", "CKK_DH"),
        ("CKM_AES_", "CKK_AES"),
        ("CKM_DES3_", "CKK_DES3"),
        ("CKM_GENERIC_SECRET", "CKK_GENERIC_SECRET"),
        ("CKM_ML_DSA", "CKK_ML_DSA"),
        ("CKM_ML_KEM", "CKK_ML_KEM"),
    ];
    table
        .iter()
        .find(|(prefix, _)| mechanism.starts_with(prefix))
        .map(|(_, key_type)| (*key_type).to_owned())
}

/// An operation's key (object index) and mechanism, set by its `C_XInit`.
type Operation = (Option<usize>, Option<String>);

/// The resolver's state, fed calls in order.
#[derive(Debug, Default)]
pub struct Resolver {
    pub objects: Vec<Object>,
    pub uses: Vec<Use>,
    /// Created handles by function, and destroyed handles.
    pub created: HashMap<String, u64>,
    pub destroyed: u64,
    handles: HashMap<(u32, i64), usize>,
    searches: HashMap<(u32, i64), Object>,
    /// The open operation of each (client, session, family): its key and mechanism.
    operations: HashMap<(u32, i64, String), Operation>,
}

impl Resolver {
    fn object(&mut self, client: u32, handle: i64) -> usize {
        *self.handles.entry((client, handle)).or_insert_with(|| {
            self.objects.push(Object::default());
            self.objects.len() - 1
        })
    }

    fn template(call: &Call, template: &str) -> Object {
        let mut object = Object::default();
        for (t, kind, value) in &call.attrs {
            if t == template
                && let Some(value) = value
            {
                object.learn(kind, value);
            }
        }
        object
    }

    fn created(&mut self, call: &Call, handle: i64, known: Object) {
        // A new object: a handle the module reuses names something else now.
        self.objects.push(known);
        self.handles
            .insert((call.client, handle), self.objects.len() - 1);
        *self.created.entry(call.func.clone()).or_default() += 1;
    }

    fn used(&mut self, index: usize, call: &Call, handle: Option<i64>, role: &str) {
        let object = handle.map(|h| self.object(call.client, h));
        self.uses.push(Use {
            call: index,
            object,
            mechanism: call.mechanism.clone(),
            role: role.to_owned(),
        });
    }

    /// Takes the `index`-th call (calls of one client in order; clients may interleave).
    pub fn feed(&mut self, index: usize, call: &Call) {
        let func = call.func.as_str();
        match func {
            "C_FindObjectsInit" => {
                if let Some(session) = call.session {
                    self.searches
                        .insert((call.client, session), Self::template(call, "in"));
                }
            }
            "C_FindObjects" if call.ok => {
                let found = call
                    .session
                    .and_then(|s| self.searches.get(&(call.client, s)).cloned())
                    .unwrap_or_default();
                for &handle in &call.out_objects {
                    let index = self.object(call.client, handle);
                    self.objects[index].merge(&found);
                }
            }
            "C_GetAttributeValue" => {
                if let Some(handle) = call.object {
                    let learnt = Self::template(call, "out");
                    let index = self.object(call.client, handle);
                    self.objects[index].merge(&learnt);
                }
            }
            "C_DestroyObject" if call.ok => {
                if let Some(handle) = call.object {
                    self.handles.remove(&(call.client, handle));
                    self.destroyed += 1;
                }
            }
            "C_GenerateKeyPair" if call.ok => {
                let key_type = key_type_of(call.mechanism.as_deref());
                for (position, (template, class)) in
                    [("public", "CKO_PUBLIC_KEY"), ("private", "CKO_PRIVATE_KEY")]
                        .into_iter()
                        .enumerate()
                {
                    if let Some(&handle) = call.out_objects.get(position) {
                        let mut known = Self::template(call, template);
                        known.learn("CKA_CLASS", class);
                        if let Some(key_type) = &key_type {
                            known.learn("CKA_KEY_TYPE", key_type);
                        }
                        self.created(call, handle, known);
                    }
                }
            }
            _ if CREATES.contains(&func) && call.ok => {
                let mut known = Self::template(call, "in");
                if func == "C_GenerateKey" {
                    known.learn("CKA_CLASS", "CKO_SECRET_KEY");
                    if let Some(key_type) = key_type_of(call.mechanism.as_deref()) {
                        known.learn("CKA_KEY_TYPE", &key_type);
                    }
                }
                if func == "C_CopyObject"
                    && let Some(source) = call.object
                {
                    let index = self.object(call.client, source);
                    known.merge(&self.objects[index].clone());
                }
                if matches!(
                    func,
                    "C_UnwrapKey" | "C_UnwrapKeyAuthenticated" | "C_DeriveKey"
                ) {
                    let role = func.to_owned();
                    self.used(index, call, call.object2, &role);
                }
                for &handle in &call.out_objects {
                    self.created(call, handle, known.clone());
                }
            }
            _ if CREATES.contains(&func) => {
                if matches!(
                    func,
                    "C_UnwrapKey" | "C_UnwrapKeyAuthenticated" | "C_DeriveKey"
                ) {
                    self.used(index, call, call.object2, func);
                }
            }
            "C_WrapKey" | "C_WrapKeyAuthenticated" => {
                self.used(index, call, call.object2, func);
                self.used(index, call, call.object, &format!("{func} (wrapped)"));
            }
            "C_DigestKey" | "C_EncapsulateKey" | "C_DecapsulateKey" => {
                self.used(index, call, call.object, func);
            }
            _ => self.operation(index, call),
        }
    }

    fn operation(&mut self, index: usize, call: &Call) {
        let (Some(family), Some(session)) = (family(&call.func), call.session) else {
            return;
        };
        let key = (call.client, session, family.to_owned());
        if call.func.ends_with("Init") {
            let object = call.object.map(|h| self.object(call.client, h));
            self.operations
                .insert(key, (object, call.mechanism.clone()));
            self.uses.push(Use {
                call: index,
                object,
                mechanism: call.mechanism.clone(),
                role: call.func.clone(),
            });
        } else {
            let (object, mechanism) = self.operations.get(&key).cloned().unwrap_or_default();
            self.uses.push(Use {
                call: index,
                object,
                mechanism: call.mechanism.clone().or(mechanism),
                role: call.func.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(func: &str, client: u32) -> Call {
        Call {
            client,
            func: func.to_owned(),
            ok: true,
            session: Some(1),
            ..Call::default()
        }
    }

    fn attr(template: &str, kind: &str, value: &str) -> (String, String, Option<String>) {
        (template.to_owned(), kind.to_owned(), Some(value.to_owned()))
    }

    #[test]
    fn a_found_key_is_named_for_its_signatures_and_handles_stay_per_process() {
        let mut r = Resolver::default();
        let mut find = call("C_FindObjectsInit", 0);
        find.attrs = vec![
            attr("in", "CKA_CLASS", "CKO_PRIVATE_KEY"),
            attr("in", "CKA_ID", "01"),
        ];
        r.feed(0, &find);
        let mut found = call("C_FindObjects", 0);
        found.out_objects = vec![7];
        r.feed(1, &found);
        let mut init = call("C_SignInit", 0);
        init.object = Some(7);
        init.mechanism = Some("CKM_SHA256_RSA_PKCS".into());
        r.feed(2, &init);
        r.feed(3, &call("C_Sign", 0));
        // Process 1 signs with its own handle 7, which it never looked up: unresolved.
        let mut other = call("C_SignInit", 1);
        other.object = Some(7);
        r.feed(4, &other);
        let named: Vec<_> = r
            .uses
            .iter()
            .map(|u| u.object.and_then(|o| r.objects[o].identity()))
            .collect();
        assert_eq!(
            named,
            vec![
                Some("private/id=01".to_owned()),
                Some("private/id=01".to_owned()),
                None
            ]
        );
        assert_eq!(r.uses[1].mechanism.as_deref(), Some("CKM_SHA256_RSA_PKCS"));
    }

    #[test]
    fn generated_pairs_and_late_attribute_reads_name_keys() {
        let mut r = Resolver::default();
        let mut generate = call("C_GenerateKeyPair", 0);
        generate.mechanism = Some("CKM_EC_KEY_PAIR_GEN".into());
        generate.out_objects = vec![2, 3];
        generate.attrs = vec![attr("private", "CKA_LABEL", "ec1")];
        r.feed(0, &generate);
        let mut sign = call("C_SignInit", 0);
        sign.object = Some(5);
        r.feed(1, &sign);
        let mut read = call("C_GetAttributeValue", 0);
        read.object = Some(5);
        read.attrs = vec![
            attr("out", "CKA_ID", "0a"),
            attr("out", "CKA_CLASS", "CKO_SECRET_KEY"),
        ];
        r.feed(2, &read);
        assert_eq!(
            r.objects[1].identity().as_deref(),
            Some("private/label=ec1")
        );
        assert_eq!(r.objects[1].key_type.as_deref(), Some("CKK_EC"));
        let used = r.uses[0].object.expect("a handle");
        assert_eq!(r.objects[used].identity().as_deref(), Some("secret/id=0a"));
        assert_eq!(r.created.get("C_GenerateKeyPair"), Some(&2));
        assert_eq!(family("C_SignFinal"), Some("Sign"));
        assert_eq!(family("C_EncryptMessageNext"), Some("MessageEncrypt"));
        assert_eq!(family("C_GetInfo"), None);
    }
}
