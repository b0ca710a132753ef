//! Progress for people: a spinner on stderr while a long step runs, only when stderr is a
//! terminal and `--quiet` is not given (scripts and CI logs never see one).

use std::io::IsTerminal;
use std::time::Duration;

/// A ticking spinner saying `message`, or `None` off a terminal or when not `enabled`.
pub fn spinner(message: &'static str, enabled: bool) -> Option<indicatif::ProgressBar> {
    if !enabled || !std::io::stderr().is_terminal() {
        return None;
    }
    let spinner = indicatif::ProgressBar::new_spinner();
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
        spinner.set_style(style);
    }
    spinner.set_message(message);
    spinner.enable_steady_tick(Duration::from_millis(120));
    Some(spinner)
}
