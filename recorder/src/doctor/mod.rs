//! `p11trace-recorder doctor`: the pkcs11-spy guide's "Troubleshooting" section as a command.
//!
//! Six checks, in the order a call travels: `environment` (what is set, what is missing, what a
//! pkcs11-spy setup should change), `module` (the real module loads and answers `C_GetInfo`),
//! `shim` (the library the application loads is p11trace's, and which version), `socket` (the
//! path the shim would use, its folder's owner and mode under the shim's rule), `recorder`
//! (someone listens there and accepts a hello) and `dataset` (the folder is writable). A check
//! without its input is `skipped`, never failed; every failure carries a `fix`. Exit status 0 when
//! every check that ran passed, 1 when one failed. JSON keys: `schemas/doctor.md`.

mod checks;
mod hello;
mod library;
mod setup;

use std::process::ExitCode;

use serde::Serialize;

use crate::options::{DoctorArgs, DoctorFormat};

/// Version of the JSON document (`schemas/doctor.md`).
pub const DOCTOR_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Skipped,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Skipped => "skipped",
        }
    }
}

/// One check's outcome.
#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    /// One line: what was found (or, when skipped, why).
    pub summary: String,
    /// What to do (always on a failure; on a pass, advice when there is some).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// What the check established, by name (documented per check in schemas/doctor.md).
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl Check {
    fn new(name: &'static str, status: Status, summary: String) -> Check {
        Check {
            name,
            status,
            summary,
            fix: None,
            details: serde_json::Map::new(),
        }
    }

    fn pass(name: &'static str, summary: String) -> Check {
        Check::new(name, Status::Pass, summary)
    }

    fn fail(name: &'static str, summary: String, fix: String) -> Check {
        Check::new(name, Status::Fail, summary).fix(fix)
    }

    fn skipped(name: &'static str, why: String) -> Check {
        Check::new(name, Status::Skipped, why)
    }

    fn fix(mut self, fix: String) -> Check {
        self.fix = Some(fix);
        self
    }

    fn detail(mut self, key: &str, value: impl Into<serde_json::Value>) -> Check {
        self.details.insert(key.to_owned(), value.into());
        self
    }
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    pub doctor_version: u32,
    pub recorder_version: &'static str,
    /// True when every check that ran passed.
    pub ok: bool,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub checks: Vec<Check>,
}

impl Report {
    fn of(checks: Vec<Check>) -> Report {
        let count = |status| checks.iter().filter(|c| c.status == status).count();
        let (passed, failed, skipped) = (
            count(Status::Pass),
            count(Status::Fail),
            count(Status::Skipped),
        );
        Report {
            doctor_version: DOCTOR_VERSION,
            recorder_version: env!("CARGO_PKG_VERSION"),
            ok: failed == 0,
            passed,
            failed,
            skipped,
            checks,
        }
    }

    fn text(&self) -> String {
        let mut out = format!(
            "p11trace doctor (p11trace-recorder {})\n",
            self.recorder_version
        );
        for check in &self.checks {
            out.push_str(&format!(
                "{:<8} {:<12} {}\n",
                check.status.as_str(),
                check.name,
                check.summary
            ));
            if let Some(fix) = &check.fix {
                let label = if check.status == Status::Fail {
                    "fix:"
                } else {
                    "advice:"
                };
                out.push_str(&format!("{:<21} {label} {fix}\n", ""));
            }
        }
        out.push_str(&format!(
            "result: {} passed, {} failed, {} skipped — {}\n",
            self.passed,
            self.failed,
            self.skipped,
            if self.ok {
                "every check that ran passed"
            } else {
                "tracing will not work until the failures are fixed"
            }
        ));
        out
    }
}

/// Runs every check.
pub fn examine(args: &DoctorArgs) -> Report {
    let setup = setup::Setup::read();
    let module = checks::module(args, &setup);
    let socket = checks::socket(args, &setup);
    let recorder = checks::recorder(args, &setup, socket.status);
    Report::of(vec![
        checks::environment(args, &setup),
        module,
        checks::shim(args),
        socket,
        recorder,
        checks::dataset(args),
    ])
}

/// `p11trace-recorder doctor`.
pub fn main(args: &DoctorArgs) -> ExitCode {
    let report = examine(args);
    match args.format {
        DoctorFormat::Text => print!("{}", report.text()),
        DoctorFormat::Json => match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(error) => {
                eprintln!("p11trace-recorder doctor: error: cannot encode the report: {error}");
                return ExitCode::from(1);
            }
        },
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
