//! What the reads of one `analyze` share: the interners of the string columns (ids are the same
//! in every file and in both reads) and verdicts worked out once per interned value.

use std::sync::Mutex;

use crate::direct::lock;
use crate::direct::names::Names;

/// The interners the files read in parallel share.
#[derive(Default)]
pub struct Shared {
    pub clients: Mutex<Names>,
    pub funcs: Mutex<Names>,
    pub rv_names: Mutex<Names>,
    pub providers: Mutex<Names>,
    pub processes: Mutex<Names>,
    pub mechanisms: Mutex<Names>,
}

/// A verdict per interned id, worked out as ids appear.
pub struct Verdicts<T = bool>(Vec<T>);

impl<T> Default for Verdicts<T> {
    fn default() -> Self {
        Verdicts(Vec::new())
    }
}

impl<T: Copy> Verdicts<T> {
    pub fn update(&mut self, names: &Mutex<Names>, test: impl Fn(&str) -> T) {
        let names = lock(names);
        while self.0.len() < names.len() {
            let name = names.name(self.0.len() as u32).unwrap_or("");
            self.0.push(test(name));
        }
    }

    /// The verdict on `id`; `null` for `NONE`.
    pub fn of(&self, id: u32, null: T) -> T {
        self.0.get(id as usize).copied().unwrap_or(null)
    }
}

impl Verdicts<Option<u8>> {
    /// The lifecycle function `id` is, by its place in `LIFECYCLE`.
    pub fn kind(&self, id: u32) -> Option<u8> {
        self.of(id, None)
    }
}
