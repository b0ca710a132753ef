//! Strings interned to dense ids, and the sentinels a direct read stores for nulls.

use rustc_hash::FxHashMap;

/// An interned string column's null.
pub const NONE: u32 = u32::MAX;
/// An integer column's null.
pub const NULL: i64 = i64::MIN;

/// Strings interned to dense ids.
#[derive(Debug, Default)]
pub struct Names {
    ids: FxHashMap<String, u32>,
    names: Vec<String>,
}

impl Names {
    pub fn id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.ids.insert(name.to_owned(), id);
        self.names.push(name.to_owned());
        id
    }

    /// The id of `name` if it was interned.
    pub fn find(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    pub fn name(&self, id: u32) -> Option<&str> {
        self.names.get(id as usize).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}
