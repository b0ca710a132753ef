//! The digests an archive holds, read from `digests/` and ordered by `sequence`.

use std::fs;

use anyhow::{Context, Result};

use crate::digest::Digest;
use crate::seal::Paths;

/// One digest file.
#[derive(Debug, Clone)]
pub struct Link {
    /// File name in `digests/`.
    pub name: String,
    pub digest: Digest,
    /// SHA-256 of the file's bytes.
    pub sha256: String,
}

/// Every digest file, parsed (or why not), sorted by sequence then name; and the names of
/// entries in `digests/` that are not digest files.
pub struct Listing {
    pub links: Vec<Link>,
    pub unreadable: Vec<(String, String)>,
    pub foreign: Vec<String>,
}

pub fn list(paths: &Paths) -> Result<Listing> {
    let mut listing = Listing {
        links: Vec::new(),
        unreadable: Vec::new(),
        foreign: Vec::new(),
    };
    let folder = paths.digests();
    if !folder.exists() {
        return Ok(listing);
    }
    let entries =
        fs::read_dir(&folder).with_context(|| format!("cannot read {}", folder.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", folder.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".json") || !entry.file_type()?.is_file() {
            listing.foreign.push(format!("digests/{name}"));
            continue;
        }
        match Digest::read(&entry.path()) {
            Ok((digest, sha256)) => listing.links.push(Link {
                name,
                digest,
                sha256,
            }),
            Err(error) => listing
                .unreadable
                .push((format!("digests/{name}"), format!("{error:#}"))),
        }
    }
    listing
        .links
        .sort_by(|a, b| (a.digest.sequence, &a.name).cmp(&(b.digest.sequence, &b.name)));
    listing.foreign.sort();
    listing.unreadable.sort();
    Ok(listing)
}

/// What is wrong with the chain's order and links (no file is read): sequences 0…n−1 each
/// once, each `prev_digest_sha256` the hash of the digest before it, each name its period's.
pub fn link_problems(links: &[Link]) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut expected_prev: Option<&str> = None;
    for (position, link) in links.iter().enumerate() {
        let what = format!("digests/{}", link.name);
        let sequence = link.digest.sequence;
        if sequence != position as u64 {
            let missing = if sequence > position as u64 {
                format!(
                    "sequence {sequence} where {position} was due: the digest of sequence {position} is missing (deleted?)"
                )
            } else {
                format!("sequence {sequence} appears twice")
            };
            problems.push((what.clone(), format!("broken chain: {missing}")));
        }
        if link.digest.prev_digest_sha256.as_deref() != expected_prev {
            problems.push((
                what.clone(),
                format!(
                    "broken chain: prev_digest_sha256 is {}, the previous digest's SHA-256 is {}",
                    link.digest.prev_digest_sha256.as_deref().unwrap_or("null"),
                    expected_prev.unwrap_or("null (none: this should be the first)")
                ),
            ));
        }
        let names_period = link.name == format!("{}.json", link.digest.period)
            || link
                .name
                .strip_prefix(&format!("{}+", link.digest.period))
                .is_some_and(|rest| rest.ends_with(".json"));
        if !names_period {
            problems.push((
                what,
                format!(
                    "named for another period than its own ({})",
                    link.digest.period
                ),
            ));
        }
        expected_prev = Some(&link.sha256);
    }
    problems
}
