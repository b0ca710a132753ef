//! Segment files of the write-ahead log: their names, their frames, reading them back, and
//! starting one whole (with its checkpoint) or not at all.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bincode::Options;

use crate::crash::Crash;
use crate::events::{Event, Lsn};

/// Largest frame accepted when reading (a corrupt length must not allocate gigabytes).
const MAX_FRAME: u32 = 256 << 20;

fn codec() -> impl Options + Copy {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .with_limit(u64::from(MAX_FRAME))
}

pub fn lsn(segment: u32, offset: u64) -> Lsn {
    (u64::from(segment) << 32) | offset
}

pub fn segment_of(lsn: Lsn) -> u32 {
    (lsn >> 32) as u32
}

pub(super) fn segment_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("seg-{segment:010}.wal"))
}

/// Segments present in `dir`, in order.
pub fn segments(dir: &Path) -> io::Result<Vec<(u32, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if let Some(number) = name
            .strip_prefix("seg-")
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse().ok())
        {
            found.push((number, path));
        }
    }
    found.sort();
    Ok(found)
}

/// Encodes `event` as one frame (`u32 length, u32 CRC-32, payload`) into `buffer`.
pub(super) fn frame(buffer: &mut Vec<u8>, event: &Event) -> io::Result<()> {
    buffer.clear();
    buffer.extend_from_slice(&[0; 8]);
    codec()
        .serialize_into(&mut *buffer, event)
        .map_err(io::Error::other)?;
    let len = u32::try_from(buffer.len() - 8)
        .map_err(|_| io::Error::other("a log frame longer than 4 GiB"))?;
    let crc = crc32fast::hash(&buffer[8..]);
    buffer[..4].copy_from_slice(&len.to_le_bytes());
    buffer[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Writes `name` whole or not at all (a temporary file, fsynced, renamed over it).
pub(super) fn replace_file(dir: &Path, name: &str, contents: &[u8]) -> io::Result<()> {
    let temp = dir.join(format!("{name}.tmp"));
    let written = File::create(&temp)
        .and_then(|mut file| file.write_all(contents).and_then(|()| file.sync_all()))
        .and_then(|()| fs::rename(&temp, dir.join(name)));
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

/// Starts segment `segment` whole or not at all: written under a temporary name with its
/// checkpoint frame, made durable, then renamed into place. On any failure nothing is left
/// (a temporary file a crash leaves is removed at the next start, see [`remove_unfinished`]).
pub(super) fn start_segment(
    dir: &Path,
    segment: u32,
    checkpoint: &[u8],
    fault: &Crash,
) -> io::Result<File> {
    replace_file(
        dir,
        "next",
        format!("{}\n", u64::from(segment) + 1).as_bytes(),
    )?;
    let path = segment_path(dir, segment);
    let temp = path.with_extension("wal.tmp");
    let _ = fs::remove_file(&temp);
    let mut placed = false;
    let started = (|| {
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&temp)?;
        fault.error_at("wal-rotate")?;
        file.write_all(checkpoint)?;
        file.sync_data()?;
        if path.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} already exists", path.display()),
            ));
        }
        fs::rename(&temp, &path)?;
        placed = true;
        File::open(dir)?.sync_all()?;
        Ok(file)
    })();
    if started.is_err() {
        let _ = fs::remove_file(if placed { &path } else { &temp });
    }
    started
}

/// Removes what an interrupted [`start_segment`] or [`replace_file`] left behind.
pub(super) fn remove_unfinished(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "tmp") {
            let _ = fs::remove_file(path);
        }
    }
}

/// A segment's intact events, and why reading stopped early (if it did).
pub type Segment = (Vec<(Lsn, Event)>, Option<String>);

/// Every intact event of a segment. Reading stops at the first torn or corrupt frame (the
/// process died while writing it: that event never reached the batcher).
pub fn read_segment(segment: u32, path: &Path) -> io::Result<Segment> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut events = Vec::new();
    let mut offset = 0usize;
    while offset < bytes.len() {
        let header = bytes.get(offset..offset + 8);
        let Some(header) = header else {
            return Ok((events, Some(format!("torn frame header at byte {offset}"))));
        };
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len > MAX_FRAME {
            return Ok((
                events,
                Some(format!("impossible frame length {len} at byte {offset}")),
            ));
        }
        let Some(payload) = bytes.get(offset + 8..offset + 8 + len as usize) else {
            return Ok((events, Some(format!("torn frame at byte {offset}"))));
        };
        if crc32fast::hash(payload) != crc {
            return Ok((events, Some(format!("checksum mismatch at byte {offset}"))));
        }
        match codec().deserialize::<Event>(payload) {
            Ok(event) => events.push((lsn(segment, offset as u64), event)),
            Err(e) => {
                return Ok((
                    events,
                    Some(format!("undecodable frame at byte {offset}: {e}")),
                ));
            }
        }
        offset += 8 + len as usize;
    }
    Ok((events, None))
}
