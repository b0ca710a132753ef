//! NOT YET IMPLEMENTED (skeleton for issue #16): the parser of this format.

use crate::{ImportedCall, LineParser, ParseTotals, Problems};

/// Whether the start of a file looks like this format.
pub fn looks_like_p11kit(_text: &str) -> bool {
    false
}

pub struct P11KitParser<'a> {
    _file: &'a str,
    _problems: &'a mut Problems,
}

impl<'a> P11KitParser<'a> {
    pub fn new(file: &'a str, problems: &'a mut Problems) -> P11KitParser<'a> {
        P11KitParser {
            _file: file,
            _problems: problems,
        }
    }
}

impl LineParser for P11KitParser<'_> {
    fn line(&mut self, _number: u64, _line: &[u8], _emit: &mut dyn FnMut(ImportedCall)) {}

    fn totals(&self) -> ParseTotals {
        ParseTotals::default()
    }
}
