//! What the recorder remembers of each client's last connection, across its own restarts
//! (`DIR/.wal/ledger.bin`), to account for calls dropped or lost *between* a client's
//! connections: when the client reconnects it reports how many records it sent on the previous
//! connection, and the difference with what was received is `lost` (see `schemas/clients.md`).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::events::now_us;

/// Entries untouched for this long are forgotten.
const KEEP_US: i64 = 7 * 24 * 3600 * 1_000_000;

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Entry {
    pub connection: u32,
    pub received: u64,
    /// `lost` already attributed to that connection's row.
    pub lost: u64,
    pub dropped_end: u64,
    pub updated_us: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Ledger {
    pub entries: HashMap<String, Entry>,
}

pub fn path(wal_dir: &Path) -> PathBuf {
    wal_dir.join("ledger.bin")
}

impl Ledger {
    pub fn load(wal_dir: &Path) -> Ledger {
        std::fs::read(path(wal_dir))
            .ok()
            .and_then(|bytes| bincode::deserialize(&bytes).ok())
            .unwrap_or_default()
    }

    pub fn save(&mut self, wal_dir: &Path) -> io::Result<()> {
        let now = now_us();
        self.entries
            .retain(|_, entry| now - entry.updated_us < KEEP_US);
        let bytes = bincode::serialize(self).map_err(io::Error::other)?;
        let temp = wal_dir.join("ledger.bin.tmp");
        std::fs::write(&temp, bytes)?;
        std::fs::File::open(&temp)?.sync_all()?;
        std::fs::rename(temp, path(wal_dir))
    }
}
