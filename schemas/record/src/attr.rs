//! The attribute types of a call record: one attribute of a template, or one returned field of an
//! info structure, and its captured value. What may carry a value is [`crate::policy`]'s call.

use serde::{Deserialize, Serialize};

/// Which template an attribute came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Template {
    In,
    Out,
    Public,
    Private,
}

impl Template {
    pub fn as_str(self) -> &'static str {
        match self {
            Template::In => "in",
            Template::Out => "out",
            Template::Public => "public",
            Template::Private => "private",
        }
    }

    pub fn parse(text: &str) -> Option<Template> {
        Some(match text {
            "in" => Template::In,
            "out" => Template::Out,
            "public" => Template::Public,
            "private" => Template::Private,
            _ => return None,
        })
    }
}

/// What an [`Attr`] describes: a `CKA_*` attribute, or a field of an info structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttrType {
    Attribute(u64),
    Field(InfoField),
}

/// One attribute of a template, or one returned field of an info structure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attr {
    pub template: Template,
    pub kind: AttrType,
    /// `ulValueLen` (-1 = `CK_UNAVAILABLE_INFORMATION`).
    pub len: i64,
    pub value: AttrValue,
}

/// A captured value. Only allowlisted attributes ever carry one (see [`crate::policy`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AttrValue {
    /// Not allowlisted: the value was never read.
    Redacted,
    /// No value to show (a size query, a failed call, an empty buffer).
    None,
    Ulong(u64),
    Bool(bool),
    /// Printable text (labels, info strings), trailing blanks removed.
    Text(String),
    /// Raw bytes of an allowlisted binary attribute (`CKA_ID`, `CKA_EC_PARAMS`).
    Bytes(Vec<u8>),
    /// HMAC-SHA256 (first 16 bytes) of a label or id under `P11TRACE_REDACT=labels`.
    Hashed([u8; 16]),
    /// A version (`2.40`).
    Version(u8, u8),
}

/// A returned field of an info structure (`C_GetInfo`, `C_GetSlotInfo`, `C_GetTokenInfo`,
/// `C_GetMechanismInfo`, `C_GetSessionInfo`) or of an interface, recorded in `attrs` with
/// `template = out` and a null `type_code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InfoField {
    CryptokiVersion,
    ManufacturerId,
    LibraryDescription,
    LibraryVersion,
    SlotDescription,
    HardwareVersion,
    FirmwareVersion,
    Label,
    Model,
    SerialNumber,
    Flags,
    MinKeySize,
    MaxKeySize,
    State,
    DeviceError,
    InterfaceName,
    InterfaceVersion,
    /// An interface the shim passed through untraced (a vendor interface).
    UntracedInterface,
}

impl InfoField {
    /// The C field name, used as the `attrs.type` value.
    pub fn name(self) -> &'static str {
        use InfoField::*;
        match self {
            CryptokiVersion => "cryptokiVersion",
            ManufacturerId => "manufacturerID",
            LibraryDescription => "libraryDescription",
            LibraryVersion => "libraryVersion",
            SlotDescription => "slotDescription",
            HardwareVersion => "hardwareVersion",
            FirmwareVersion => "firmwareVersion",
            Label => "label",
            Model => "model",
            SerialNumber => "serialNumber",
            Flags => "flags",
            MinKeySize => "ulMinKeySize",
            MaxKeySize => "ulMaxKeySize",
            State => "state",
            DeviceError => "ulDeviceError",
            InterfaceName => "pInterfaceName",
            InterfaceVersion => "version",
            UntracedInterface => "untracedInterface",
        }
    }
}

/// An info-structure field (`C_GetInfo`, `C_GetTokenInfo`, …) as an `out` attribute; its `len` is
/// the text's length, -1 for numbers and versions. The shim and the spy importer both build them
/// here, so the two sources record the same thing.
pub fn info_field(field: InfoField, value: AttrValue) -> Attr {
    let len = match &value {
        AttrValue::Text(text) => text.len() as i64,
        _ => -1,
    };
    Attr {
        template: Template::Out,
        kind: AttrType::Field(field),
        len,
        value,
    }
}
