//! NOT YET IMPLEMENTED (skeleton for issue #16): the parser of this format.

use crate::{Clock, ImportedCall, LineParser, ParseTotals, Problems};

/// Whether the start of a file looks like this format.
pub fn looks_like_pkcs11shim(_text: &str) -> bool {
    false
}

pub struct ShimLogParser<'a> {
    _file: &'a str,
    _problems: &'a mut Problems,
}

impl<'a> ShimLogParser<'a> {
    pub fn new(
        file: &'a str,
        _clock: &'a mut Clock,
        problems: &'a mut Problems,
    ) -> ShimLogParser<'a> {
        ShimLogParser {
            _file: file,
            _problems: problems,
        }
    }
}

impl LineParser for ShimLogParser<'_> {
    fn line(&mut self, _number: u64, _line: &[u8], _emit: &mut dyn FnMut(ImportedCall)) {}

    fn totals(&self) -> ParseTotals {
        ParseTotals::default()
    }
}
