//! The README's runnable blocks. A fenced block right after a `<!-- runs: NAME -->` line is meant
//! to be pasted into a shell (`sh`) or Python (`python`) as it is written;
//! `tests/tests/readme_runs.rs` runs every one of them in order, in one home folder, and checks
//! what each printed. A marker without a fence after it is an error, so a block cannot silently
//! drop out of the test.

use anyhow::{Context, Result, bail};

/// One runnable block of a Markdown file.
#[derive(Debug, Clone)]
pub struct Block {
    pub name: String,
    /// The fence's language: `sh` or `python`.
    pub lang: String,
    pub code: String,
    /// 1-based line of the marker (for messages).
    pub line: usize,
}

const MARKER: &str = "<!-- runs: ";

/// Every block marked runnable in `markdown`, in order.
pub fn runnable_blocks(markdown: &str) -> Result<Vec<Block>> {
    let mut blocks = Vec::new();
    let mut lines = markdown.lines().enumerate();
    while let Some((index, line)) = lines.next() {
        let Some(rest) = line.trim().strip_prefix(MARKER) else {
            continue;
        };
        let name = rest
            .strip_suffix("-->")
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .with_context(|| format!("README.md:{}: a marker is `<!-- runs: NAME -->`", index + 1))?;
        let fence = lines.next().map(|(_, l)| l.trim()).unwrap_or_default();
        let Some(lang) = fence.strip_prefix("```").filter(|l| !l.is_empty()) else {
            bail!("README.md:{}: `{name}` is not followed by a fenced block with a language", index + 1);
        };
        let mut code = String::new();
        let mut closed = false;
        for (_, l) in lines.by_ref() {
            if l.trim() == "```" {
                closed = true;
                break;
            }
            code.push_str(l);
            code.push('\n');
        }
        if !closed {
            bail!("README.md:{}: the block `{name}` is never closed", index + 1);
        }
        blocks.push(Block {
            name: name.to_owned(),
            lang: lang.split_whitespace().next().unwrap_or_default().to_owned(),
            code,
            line: index + 1,
        });
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_marked_blocks_only_and_refuses_a_marker_without_a_block() {
        let text = "```sh\nnot marked\n```\n<!-- runs: a -->\n```sh\necho 1\necho 2\n```\n\n<!-- runs: b -->\n```python\nprint(3)\n```\n";
        let blocks = runnable_blocks(text).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!((blocks[0].name.as_str(), blocks[0].lang.as_str()), ("a", "sh"));
        assert_eq!(blocks[0].code, "echo 1\necho 2\n");
        assert_eq!((blocks[1].name.as_str(), blocks[1].line), ("b", 9));
        assert!(runnable_blocks("<!-- runs: c -->\ntext\n").is_err());
        assert!(runnable_blocks("<!-- runs: d -->\n```sh\nopen\n").is_err());
    }
}
