//! The six checks of `doctor`, each from its input to one [`Check`].

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use p11trace_record::socket::{self, Untrusted};
use serde_json::Value;

use super::setup::{Setup, Sourced};
use super::{Check, Status, hello, library};
use crate::options::DoctorArgs;

/// The module given (`--module`) or the one the shim would load.
fn module_source(args: &DoctorArgs, setup: &Setup) -> Option<Sourced> {
    match &args.module {
        Some(path) => Some(Sourced {
            value: path.clone(),
            source: "--module".into(),
        }),
        None => setup.module(),
    }
}

/// The socket given (`--socket`) or the one the shim would use.
fn socket_source(args: &DoctorArgs, setup: &Setup) -> Sourced {
    match &args.socket {
        Some(path) => Sourced {
            value: path.clone(),
            source: "--socket".into(),
        },
        None => setup.socket(),
    }
}

pub fn environment(args: &DoctorArgs, setup: &Setup) -> Check {
    let set: Vec<String> = setup
        .variables
        .iter()
        .filter_map(|(name, value)| Some(format!("{name}={}", value.as_deref()?)))
        .collect();
    let unset: Vec<&str> = setup
        .variables
        .iter()
        .filter(|(_, value)| value.is_none())
        .map(|(name, _)| *name)
        .collect();
    let mut variables = serde_json::Map::new();
    for (name, value) in &setup.variables {
        variables.insert(
            (*name).to_owned(),
            value.clone().map_or(Value::Null, Value::String),
        );
    }
    let mut described = format!(
        "set: {}; not set: {}",
        if set.is_empty() {
            "none".to_owned()
        } else {
            set.join(" ")
        },
        if unset.is_empty() {
            "none".to_owned()
        } else {
            unset.join(" ")
        }
    );
    if !setup.config_warnings.is_empty() {
        described.push_str(&format!(
            "; the shim would warn: {}",
            setup.config_warnings.join("; ")
        ));
    }
    let config = match &setup.config {
        Ok(settings) if settings.is_empty() => Value::Null,
        Ok(_) => Value::String(setup.config_path.clone()),
        Err(_) => Value::Null,
    };
    let with_details = |check: Check| {
        check
            .detail("variables", Value::Object(variables.clone()))
            .detail("config_file", config.clone())
    };
    if let Err(why) = &setup.config {
        return with_details(Check::fail(
            "environment",
            format!("{described}; the shim would say: {why}"),
            format!(
                "make {} readable by you, owned by you or root, and not writable by others",
                setup.config_path
            ),
        ));
    }
    let mode = setup.mode();
    if mode == "off" {
        return with_details(Check::fail(
            "environment",
            format!("{described}; P11TRACE_MODE=off: the shim forwards calls and records none"),
            "unset P11TRACE_MODE (or set it to record)".into(),
        ));
    }
    let spy_style = setup.var("PKCS11SPY").is_some() && setup.var("P11TRACE_MODULE").is_none();
    if spy_style {
        let spy = setup.var("PKCS11SPY").unwrap_or_default();
        return with_details(
            Check::pass(
                "environment",
                format!(
                    "{described}; a pkcs11-spy setup: the shim takes PKCS11SPY as the real module"
                ),
            )
            .fix(format!(
                "coming from pkcs11-spy: export P11TRACE_MODULE={spy} (the shim honours PKCS11SPY, \
                 but pkcs11-spy.so reads it too), point the application at libp11trace_shim.so \
                 instead of pkcs11-spy.so, drop PKCS11SPY_OUTPUT (records go to the recorder), \
                 and start `p11trace-recorder --dataset DIR`"
            )),
        );
    }
    if args.module.is_none() && setup.module().is_none() {
        return with_details(Check::fail(
            "environment",
            format!("{described}; no real module is named anywhere"),
            format!(
                "export P11TRACE_MODULE=/path/to/the/real/module.so (the .so the application \
                 used before), or put `module = …` in {}",
                setup.config_path
            ),
        ));
    }
    with_details(Check::pass("environment", described))
}

pub fn module(args: &DoctorArgs, setup: &Setup) -> Check {
    let Some(module) = module_source(args, setup) else {
        return Check::skipped(
            "module",
            "no real module given: --module, P11TRACE_MODULE, PKCS11SPY or `module` in the \
             configuration file"
                .into(),
        );
    };
    let shown = module.value.display().to_string();
    match library::probe_module(&module.value) {
        Ok(info) => Check::pass(
            "module",
            format!(
                "{shown} (from {}) loads and answers C_GetInfo: {} \"{}\" version {}, Cryptoki {}",
                module.source,
                info.manufacturer,
                info.description,
                info.library_version,
                info.cryptoki_version
            ),
        )
        .detail("path", shown)
        .detail("source", module.source)
        .detail("manufacturer", info.manufacturer)
        .detail("library_description", info.description)
        .detail("library_version", info.library_version)
        .detail("cryptoki_version", info.cryptoki_version),
        Err(failure) => Check::fail(
            "module",
            format!("{} (from {})", failure.summary, module.source),
            failure.fix,
        )
        .detail("path", shown)
        .detail("source", module.source),
    }
}

pub fn shim(args: &DoctorArgs) -> Check {
    let Some(path) = &args.shim else {
        return Check::skipped(
            "shim",
            "no --shim PATH given (the module path the application is configured to load)".into(),
        );
    };
    let shown = path.display().to_string();
    match library::probe_shim(path) {
        Ok(version) => {
            let check = Check::pass(
                "shim",
                format!("{shown} is the p11trace shim, version {version}"),
            )
            .detail("path", shown)
            .detail("version", version.clone());
            if version == env!("CARGO_PKG_VERSION") {
                check
            } else {
                check.fix(format!(
                    "this recorder is version {}; use a shim and recorder of one release",
                    env!("CARGO_PKG_VERSION")
                ))
            }
        }
        Err(failure) => Check::fail("shim", failure.summary, failure.fix).detail("path", shown),
    }
}

pub fn socket(args: &DoctorArgs, setup: &Setup) -> Check {
    let socket = socket_source(args, setup);
    let path = socket.value.display().to_string();
    let folder = socket::socket_folder(&socket.value);
    let shown = folder.display().to_string();
    let base = |check: Check| {
        check
            .detail("path", path.clone())
            .detail("source", socket.source.clone())
            .detail("folder", shown.clone())
    };
    let metadata = match std::fs::metadata(folder) {
        Ok(metadata) => metadata,
        Err(error) => {
            return base(Check::fail(
                "socket",
                format!(
                    "{path} (from {}): its folder {shown} cannot be read: {error}",
                    socket.source
                ),
                format!(
                    "start the recorder with --socket {path} (it creates the folder 0700), or \
                     `mkdir -m 700 {shown}`"
                ),
            ));
        }
    };
    let uid = socket::current_uid();
    let mode = metadata.mode() & 0o7777;
    let found = |check: Check| {
        base(check)
            .detail("folder_owner_uid", metadata.uid())
            .detail("folder_mode", format!("{mode:o}"))
    };
    match socket::check_folder(&metadata) {
        Ok(()) => found(Check::pass(
            "socket",
            format!(
                "{path} (from {}): folder {shown} owned by uid {} (us), mode {mode:o}",
                socket.source,
                metadata.uid()
            ),
        )),
        Err(why) => {
            let fix = match why {
                Untrusted::Foreign { .. } => format!(
                    "use a socket in a folder of your own (uid {uid}): P11TRACE_SOCKET and the \
                     recorder's --socket, e.g. /run/user/{uid}/p11trace.sock"
                ),
                Untrusted::Open { .. } => format!("chmod 700 {shown} (or use a private folder)"),
            };
            found(Check::fail(
                "socket",
                format!(
                    "{path} (from {}): the shim would refuse it: folder {shown} {why}",
                    socket.source
                ),
                fix,
            ))
        }
    }
}

pub fn recorder(args: &DoctorArgs, setup: &Setup, socket_check: Status) -> Check {
    let socket = socket_source(args, setup);
    let path = socket.value.display().to_string();
    if socket_check != Status::Pass {
        return Check::skipped(
            "recorder",
            format!("the socket check failed: the shim would not connect to {path}"),
        )
        .detail("socket", path);
    }
    match hello::say_hello(&socket.value) {
        Ok(accepted) => Check::pass(
            "recorder",
            format!(
                "a recorder listens at {path} and accepted a hello (protocol {}, run {})",
                accepted.protocol_version, accepted.run_id
            ),
        )
        .detail("socket", path)
        .detail("protocol_version", accepted.protocol_version)
        .detail("run_id", accepted.run_id),
        Err(hello::Refused::Absent(why)) => Check::fail(
            "recorder",
            why,
            format!(
                "start one: p11trace-recorder --dataset DIR --socket {path} (or trace one command \
                 with p11trace-recorder run -- COMMAND)"
            ),
        )
        .detail("socket", path),
        Err(hello::Refused::Denied(why)) => Check::fail(
            "recorder",
            why,
            format!(
                "the socket belongs to another user: run a recorder as the application's own \
                 user (p11trace-recorder --dataset DIR --socket {path}); one recorder serves one uid"
            ),
        )
        .detail("socket", path),
        Err(hello::Refused::Failed(why)) => Check::fail(
            "recorder",
            why,
            "restart the recorder; a shim and recorder must be of one release".into(),
        )
        .detail("socket", path),
    }
}

/// A dataset in object storage: the store opens with this environment and answers a listing.
fn store(url: &str) -> Check {
    let fix = "check the URL's bucket, AWS_* (or GOOGLE_*, AZURE_*) credentials, AWS_REGION and \
               AWS_ENDPOINT_URL (with AWS_ALLOW_HTTP=true for http)"
        .to_owned();
    let listed = p11trace_store::Remote::open(url).and_then(|remote| remote.list("calls"));
    match listed {
        Ok(files) => Check::pass(
            "dataset",
            format!(
                "the store answers for {url} ({} calls file(s) there); the recorder spools \
                 locally and uploads",
                files.len()
            ),
        ),
        Err(error) => Check::fail("dataset", error.to_string(), fix),
    }
    .detail("path", url.to_owned())
}

pub fn dataset(args: &DoctorArgs) -> Check {
    let Some(dir) = &args.dataset else {
        return Check::skipped("dataset", "no --dataset DIR given".into());
    };
    let shown = dir.display().to_string();
    if p11trace_store::is_url(&shown) {
        return store(&shown);
    }
    let fix = format!("give the recorder a folder you can write (or chmod u+w {shown})");
    if !dir.exists() {
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        return match probe_write(parent) {
            Ok(()) => Check::pass(
                "dataset",
                format!(
                    "{shown} does not exist yet; the recorder will create it in {} (writable)",
                    parent.display()
                ),
            )
            .detail("path", shown),
            Err(error) => Check::fail(
                "dataset",
                format!(
                    "{shown} does not exist and {} is not writable: {error}",
                    parent.display()
                ),
                fix,
            )
            .detail("path", shown),
        };
    }
    if !dir.is_dir() {
        return Check::fail(
            "dataset",
            format!("{shown} is not a folder"),
            "give --dataset a folder (the recorder writes calls/ and clients/ in it)".into(),
        )
        .detail("path", shown);
    }
    match probe_write(dir) {
        Ok(()) => {
            Check::pass("dataset", format!("{shown} is a writable folder")).detail("path", shown)
        }
        Err(error) => Check::fail("dataset", format!("cannot write in {shown}: {error}"), fix)
            .detail("path", shown),
    }
}

/// Creates and removes a file in `dir`.
fn probe_write(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let probe = dir.join(format!(".p11trace-doctor-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}
