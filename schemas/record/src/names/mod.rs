//! Names of PKCS#11 constants, both ways.
//!
//! Known values render as their canonical name (`CKR_OK`); unknown ones (vendor-defined, or newer
//! than PKCS#11 3.2) as `0x%08lx`, the form pkcs11-spy uses, so nothing is ever lost: a name can
//! always be turned back into its number with [`Table::code`].

mod constants;

use std::borrow::Cow;

/// One family of constants (return values, mechanisms, ...).
#[derive(Debug, Clone, Copy)]
pub struct Table {
    by_value: &'static [(u64, &'static str)],
    by_name: &'static [(&'static str, u64)],
}

pub static RV: Table = Table::new(constants::RV_BY_VALUE, constants::RV_BY_NAME);
pub static MECHANISM: Table =
    Table::new(constants::MECHANISM_BY_VALUE, constants::MECHANISM_BY_NAME);
pub static ATTRIBUTE: Table =
    Table::new(constants::ATTRIBUTE_BY_VALUE, constants::ATTRIBUTE_BY_NAME);
pub static USER: Table = Table::new(constants::USER_BY_VALUE, constants::USER_BY_NAME);
pub static OBJECT_CLASS: Table = Table::new(
    constants::OBJECT_CLASS_BY_VALUE,
    constants::OBJECT_CLASS_BY_NAME,
);
pub static KEY_TYPE: Table = Table::new(constants::KEY_TYPE_BY_VALUE, constants::KEY_TYPE_BY_NAME);
pub static CERTIFICATE_TYPE: Table = Table::new(
    constants::CERTIFICATE_TYPE_BY_VALUE,
    constants::CERTIFICATE_TYPE_BY_NAME,
);
pub static MGF: Table = Table::new(constants::MGF_BY_VALUE, constants::MGF_BY_NAME);
pub static GENERATOR: Table =
    Table::new(constants::GENERATOR_BY_VALUE, constants::GENERATOR_BY_NAME);
pub static KDF: Table = Table::new(constants::KDF_BY_VALUE, constants::KDF_BY_NAME);
pub static OAEP_SOURCE: Table = Table::new(
    constants::OAEP_SOURCE_BY_VALUE,
    constants::OAEP_SOURCE_BY_NAME,
);

impl Table {
    const fn new(
        by_value: &'static [(u64, &'static str)],
        by_name: &'static [(&'static str, u64)],
    ) -> Table {
        Table { by_value, by_name }
    }

    /// The canonical name of `value`, if it is a known constant.
    pub fn name(&self, value: u64) -> Option<&'static str> {
        self.by_value
            .binary_search_by_key(&value, |&(v, _)| v)
            .ok()
            .map(|index| self.by_value[index].1)
    }

    /// The name of `value`, or `0x%08lx` when unknown.
    pub fn render(&self, value: u64) -> Cow<'static, str> {
        match self.name(value) {
            Some(name) => Cow::Borrowed(name),
            None => Cow::Owned(hex_code(value)),
        }
    }

    /// The value of a name (aliases accepted) or of a `0x…` rendering.
    pub fn code(&self, name: &str) -> Option<u64> {
        if let Some(hex) = name.strip_prefix("0x").or_else(|| name.strip_prefix("0X")) {
            return u64::from_str_radix(hex, 16).ok();
        }
        self.by_name
            .binary_search_by_key(&name, |&(n, _)| n)
            .ok()
            .map(|index| self.by_name[index].1)
    }

    /// Every (value, canonical name) pair, sorted by value.
    pub fn entries(&self) -> &'static [(u64, &'static str)] {
        self.by_value
    }
}

/// `0x%08lx`: how an unknown constant is written.
pub fn hex_code(value: u64) -> String {
    format!("{value:#010x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_render_as_names_and_unknown_as_hex() {
        assert_eq!(RV.render(0), "CKR_OK");
        assert_eq!(RV.render(0xa0), "CKR_PIN_INCORRECT");
        assert_eq!(RV.render(0x8000_0001), "0x80000001");
        assert_eq!(MECHANISM.render(0x1040), "CKM_EC_KEY_PAIR_GEN");
        assert_eq!(ATTRIBUTE.render(0x180), "CKA_EC_PARAMS");
        assert_eq!(USER.render(1), "CKU_USER");
        assert_eq!(USER.render(7), "0x00000007");
        assert_eq!(KEY_TYPE.render(3), "CKK_EC");
    }

    #[test]
    fn names_and_aliases_parse_back() {
        assert_eq!(MECHANISM.code("CKM_ECDSA_KEY_PAIR_GEN"), Some(0x1040));
        assert_eq!(MECHANISM.code("CKM_EC_KEY_PAIR_GEN"), Some(0x1040));
        assert_eq!(RV.code("0x80000001"), Some(0x8000_0001));
        assert_eq!(RV.code("CKR_NOPE"), None);
        for table in [
            &RV,
            &MECHANISM,
            &ATTRIBUTE,
            &USER,
            &OBJECT_CLASS,
            &KEY_TYPE,
            &MGF,
            &KDF,
        ] {
            for &(value, name) in table.entries() {
                assert_eq!(table.code(name), Some(value), "{name}");
            }
            assert!(table.by_value.windows(2).all(|w| w[0].0 < w[1].0));
            assert!(table.by_name.windows(2).all(|w| w[0].0 < w[1].0));
        }
    }
}
