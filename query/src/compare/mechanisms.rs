//! Each call's mechanism, where the row itself names none: `C_Sign` is keyed by the mechanism of
//! its operation's `C_SignInit`. By `op_id` within each file as it is read ([`resolve_chunk`],
//! on the reading threads), then for the operations that span files and for clients without
//! `op_id`s (pkcs11-spy imports: the last `C_XInit` of the same family on the same session, in
//! `seq` order) once all files are read ([`resolve_across`]).

use rustc_hash::{FxHashMap, FxHashSet};

use super::rows::{Chunk, NONE, NULL, Names, Rows};

/// The operation family of a function (`C_SignUpdate` → `C_Sign`); itself for the others.
fn family(func: &str) -> &str {
    ["Init", "Update", "Final"]
        .iter()
        .find_map(|suffix| func.strip_suffix(suffix))
        .unwrap_or(func)
}

/// Per function id, whether the function starts an operation (`C_SignInit`, `C_FindObjectsInit`).
pub fn inits(funcs: &Names) -> Vec<bool> {
    (0..funcs.len() as u32)
        .map(|f| funcs.name(f).is_some_and(|name| name.ends_with("Init")))
        .collect()
}

/// Resolves the rows of one file whose operation starts in it; the rest go to
/// `chunk.unresolved`. `is_init[func]`: whether the function starts an operation.
pub fn resolve_chunk(chunk: &mut Chunk, is_init: &[bool]) {
    // An operation's calls follow one another (`C_SignInit`, then its `C_Sign`): the last
    // operation is checked before the map is hashed.
    let mut by_op: FxHashMap<(u32, i64), u32> = FxHashMap::default();
    let (mut last_inserted, mut last_client) = (None, None);
    for row in 0..chunk.len() {
        let (client, op) = (chunk.client[row], chunk.op[row]);
        if op == NULL {
            continue;
        }
        if last_client != Some(client) {
            chunk.clients_with_ops.insert(client);
            last_client = Some(client);
        }
        let mech = chunk.mech[row];
        let starts = is_init
            .get(chunk.func[row] as usize)
            .copied()
            .unwrap_or(false);
        if (mech != NONE || starts) && last_inserted != Some((client, op, mech)) {
            // The first mechanism named wins; an `Init` without one only says where the
            // operation started.
            let known = by_op.entry((client, op)).or_insert(mech);
            if *known == NONE {
                *known = mech;
            }
            last_inserted = Some((client, op, mech));
        }
    }
    let mut last_found: Option<((u32, i64), Option<u32>)> = None;
    for row in 0..chunk.len() {
        if chunk.mech[row] != NONE || chunk.op[row] == NULL {
            continue;
        }
        let key = (chunk.client[row], chunk.op[row]);
        let found = match last_found {
            Some((last, found)) if last == key => found,
            _ => {
                let found = by_op.get(&key).copied();
                last_found = Some((key, found));
                found
            }
        };
        match found {
            Some(mech) => chunk.mech[row] = mech,
            None => chunk.unresolved.push(row as u32),
        }
    }
}

/// Resolves what [`resolve_chunk`] could not: operations whose rows span files, and every row
/// of the clients that have no `op_id`s.
pub fn resolve_across(rows: &mut Rows) {
    let wanted: FxHashSet<(u32, i64)> = rows
        .chunks
        .iter()
        .flat_map(|chunk| {
            chunk
                .unresolved
                .iter()
                .map(|&row| (chunk.client[row as usize], chunk.op[row as usize]))
        })
        .collect();
    if !wanted.is_empty() {
        let mut by_op: FxHashMap<(u32, i64), u32> = FxHashMap::default();
        for chunk in &rows.chunks {
            for row in 0..chunk.len() {
                let key = (chunk.client[row], chunk.op[row]);
                if chunk.mech[row] != NONE && chunk.op[row] != NULL && wanted.contains(&key) {
                    by_op.entry(key).or_insert(chunk.mech[row]);
                }
            }
        }
        for chunk in &mut rows.chunks {
            for &row in &chunk.unresolved {
                let row = row as usize;
                let key = (chunk.client[row], chunk.op[row]);
                chunk.mech[row] = by_op.get(&key).copied().unwrap_or(NONE);
            }
        }
    }
    by_session(rows);
}

/// Clients without `op_id`s: a row without a mechanism takes the one of the last `C_XInit` of
/// its family on its session, in `seq` order.
fn by_session(rows: &mut Rows) {
    let with_ops: FxHashSet<u32> = rows
        .chunks
        .iter()
        .flat_map(|chunk| chunk.clients_with_ops.iter().copied())
        .collect();
    let mut rest: Vec<(u32, i64, u32, u32)> = Vec::new();
    for (index, chunk) in rows.chunks.iter().enumerate() {
        for row in 0..chunk.len() {
            let client = chunk.client[row];
            if chunk.session[row] != NULL && !with_ops.contains(&client) {
                rest.push((client, chunk.seq[row], index as u32, row as u32));
            }
        }
    }
    if rest.is_empty() {
        return;
    }
    let mut families = Names::default();
    let family_of: Vec<u32> = (0..rows.funcs.len() as u32)
        .map(|f| families.id(family(rows.funcs.name(f).unwrap_or(""))))
        .collect();
    let inits = inits(&rows.funcs);
    rest.sort_unstable();
    let mut open: FxHashMap<(u32, i64, u32), u32> = FxHashMap::default();
    for (client, _, index, row) in rest {
        let chunk = &mut rows.chunks[index as usize];
        let row = row as usize;
        let func = chunk.func[row] as usize;
        let Some(&family) = family_of.get(func) else {
            continue;
        };
        let key = (client, chunk.session[row], family);
        if inits[func] && chunk.mech[row] != NONE {
            open.insert(key, chunk.mech[row]);
        } else if chunk.mech[row] == NONE {
            chunk.mech[row] = open.get(&key).copied().unwrap_or(NONE);
        }
    }
}
