//! Looking for secrets in what was written: every file below a folder, each secret raw, as hex
//! (either case, also as pkcs11-spy's hex-dump lines) and as base64 at every alignment, and the
//! decompressed values of Parquet files.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

use crate::data::duckdb;

/// Every file below `dir` (hidden ones included), for secret scans.
pub fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// The bytes of every hex-dump line in `text` (`    %08X  HH HH …`), concatenated: how
/// pkcs11-spy prints buffers, 16 bytes a line.
fn dumped_bytes(text: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("    ") else {
            continue;
        };
        if rest.len() < 10
            || !rest[..8].bytes().all(|b| b.is_ascii_hexdigit())
            || &rest[8..10] != "  "
        {
            continue;
        }
        for pair in rest[10..].split(' ').take_while(|p| p.len() == 2) {
            match u8::from_str_radix(pair, 16) {
                Ok(byte) => bytes.push(byte),
                Err(_) => break,
            }
        }
    }
    bytes
}

/// Whether `haystack` contains `needle` as raw bytes, hex (either case, also as hex-dump lines)
/// or base64.
pub fn contains_secret(haystack: &[u8], needle: &[u8]) -> bool {
    let found = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    let raw = found(haystack) || found(&dumped_bytes(&String::from_utf8_lossy(haystack)));
    let hex_lower: String = needle.iter().map(|b| format!("{b:02x}")).collect();
    let hay_lower = String::from_utf8_lossy(haystack).to_lowercase();
    let base64 = base64_variants(needle);
    raw || hay_lower.contains(&hex_lower)
        || base64
            .iter()
            .any(|b| String::from_utf8_lossy(haystack).contains(b.as_str()))
}

/// Base64 of `needle` at each of the three alignments it can have in encoded data: the whole
/// 3-byte groups of `needle[k..]` encode the same wherever the needle sits, for one k in 0..3.
fn base64_variants(needle: &[u8]) -> Vec<String> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..3)
        .filter_map(|k| {
            let rest = needle.get(k..)?;
            let whole = &rest[..rest.len() / 3 * 3];
            if whole.is_empty() {
                return None;
            }
            let mut out = String::new();
            for group in whole.chunks(3) {
                let n =
                    (u32::from(group[0]) << 16) | (u32::from(group[1]) << 8) | u32::from(group[2]);
                for i in 0..4 {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                }
            }
            Some(out)
        })
        .collect()
}

/// Every value of every column of every row of the Parquet file `file`, decompressed: DuckDB
/// writes it out as CSV (nested columns as their text form) under `scratch`.
pub fn decompressed(file: &Path, scratch: &Path) -> Result<Vec<u8>> {
    let name = file.file_name().context("a Parquet file without a name")?;
    let csv = scratch.join(format!("{}.csv", name.to_string_lossy()));
    duckdb(&format!(
        "COPY (SELECT * FROM read_parquet('{}')) TO '{}' (FORMAT csv, HEADER)",
        file.display(),
        csv.display()
    ))?;
    let values = std::fs::read(&csv).with_context(|| format!("{}", csv.display()))?;
    ensure!(
        !values.is_empty(),
        "DuckDB wrote nothing for {}",
        file.display()
    );
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scanner_finds_raw_hex_and_base64_at_every_alignment() {
        let secret = b"User-Pin-8812";
        for prefix in ["", "x", "xy"] {
            let mut data = prefix.as_bytes().to_vec();
            data.extend_from_slice(secret);
            data.extend_from_slice(b"tail");
            let encoded = {
                const A: &[u8; 64] =
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
                let mut out = String::new();
                for chunk in data.chunks(3) {
                    let b = [
                        chunk[0],
                        *chunk.get(1).unwrap_or(&0),
                        *chunk.get(2).unwrap_or(&0),
                    ];
                    let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
                    for i in 0..=chunk.len() {
                        out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                    }
                }
                out
            };
            assert!(
                contains_secret(encoded.as_bytes(), secret),
                "base64 with prefix {prefix:?}"
            );
        }
        assert!(contains_secret(b"..55736572..", b"User"));
        assert!(contains_secret(b"..User-Pin-8812..", secret));
        assert!(!contains_secret(b"nothing to see", secret));
    }
}
