//! What the reads of one `analyze` share: the interners of the string columns (ids are the same
//! in every file and in both reads).

use std::sync::Mutex;

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
