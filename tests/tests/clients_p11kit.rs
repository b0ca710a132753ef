//! A p11-kit-managed setup traced with the shipped pair: `packaging/p11trace.module` (a p11-kit
//! module file, which can only name the shim) and `packaging/p11trace.conf` (the shim's own
//! configuration file, `P11TRACE_CONFIG`, naming the real module). In a user configuration of its
//! own, `p11-kit list-modules`, `p11tool --list-tokens` (GnuTLS loading p11-kit's modules itself)
//! and `pkcs11-tool` through p11-kit's proxy module print what they print with a module file
//! naming SoftHSM2 directly (paths aside); every row names SoftHSM2, the module the
//! configuration file gave, and holds the calls each client is known to make.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use p11trace_tests::clients::*;
use p11trace_tests::p11kit::{P11Kit, PROXY};
use p11trace_tests::*;

/// Where the shipped module file expects the shim.
const INSTALLED: &str = "/usr/local/lib/libp11trace_shim.so";

fn shipped(name: &str) -> Result<String> {
    let path = workspace().join("packaging").join(name);
    std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))
}

#[test]
fn p11kit_loads_the_shim_from_the_shipped_module_file_and_the_real_module_from_its_config()
-> Result<()> {
    let mut traced = traced_with_keys("p11kit")?;
    let module_file = shipped("p11trace.module")?;
    let module_line = format!("module: {INSTALLED}");
    ensure!(
        module_file.lines().any(|l| l == module_line),
        "packaging/p11trace.module has no `{module_line}` line"
    );
    let config = shipped("p11trace.conf")?;
    ensure!(
        config.lines().any(|l| l == format!("module = {SOFTHSM}")),
        "packaging/p11trace.conf does not name {SOFTHSM}"
    );
    let shim_path = shim().display().to_string();
    let through = P11Kit::with_module_file(&module_file.replace(INSTALLED, &shim_path))?;
    let direct = P11Kit::with_module_file(&module_file.replace(INSTALLED, SOFTHSM))?;
    // The shim's configuration file: the shipped one, and this recorder's socket; owned by us,
    // 0600 (the shim refuses a group- or world-writable one).
    let conf = through.home().join("p11trace.conf");
    std::fs::write(
        &conf,
        format!("{config}socket = {}\n", traced.recorder.socket.display()),
    )?;
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600))?;

    let label = traced.token.label.clone();
    // (program, arguments, a line of what it prints)
    let workloads: [(&str, Vec<&str>, String); 3] = [
        (
            "p11-kit",
            vec!["list-modules"],
            format!("    token: {label}"),
        ),
        (
            "p11tool",
            vec!["--list-tokens"],
            format!("\tLabel: {label}"),
        ),
        (
            "pkcs11-tool",
            login(&["--module", PROXY, "--token-label", &label, "--list-objects"]),
            format!("  label:      {RSA}"),
        ),
    ];
    for (program, args, shown) in &workloads {
        let result = same_both_ways(
            &traced.token,
            &format!("{program} {}", args.join(" ")),
            &mut |through_shim| {
                let p11kit = if through_shim { &through } else { &direct };
                let mut command: Command = p11kit.command(&traced, program, args);
                // Nothing from the environment: the module file names the shim, the shim's
                // file names the real module and the socket.
                command
                    .env_remove("P11TRACE_MODULE")
                    .env_remove("P11TRACE_SOCKET")
                    .env_remove("PKCS11SPY");
                if through_shim {
                    command.env("P11TRACE_CONFIG", &conf);
                }
                command
            },
            &|s| s.replace(&shim_path, SOFTHSM),
        )?;
        ensure!(
            stdout_of(&result).lines().any(|l| l == shown),
            "{program} does not print `{shown}`: {}",
            stdout_of(&result)
        );
    }

    stop_clean(&mut traced.recorder)?;
    let recorder = &traced.recorder;
    let calls = recorder.table("calls");
    let modules = duckdb(&format!(
        "SELECT module, list(DISTINCT process ORDER BY process) AS processes FROM {calls} GROUP BY 1"
    ))?;
    ensure!(
        modules.len() == 1
            && modules[0]["module"] == SOFTHSM
            && modules[0]["processes"] == serde_json::json!(["p11-kit", "p11tool", "pkcs11-tool"]),
        "every call forwarded to the configuration file's module: {modules:?}"
    );
    for (process, expected) in [
        // One slot list (p11-kit passes a buffer, no size query), every slot's token; no
        // session, no login.
        (
            "p11-kit",
            vec![
                ("C_Initialize", 1),
                ("C_GetSlotList", 1),
                ("C_GetTokenInfo", 2),
                ("C_OpenSession", 0),
                ("C_Login", 0),
                ("C_Finalize", 1),
            ],
        ),
        // The same token walk as with `--provider` (clients_gnutls.rs).
        (
            "p11tool",
            vec![
                ("C_Initialize", 1),
                ("C_GetSlotList", 4),
                ("C_GetSlotInfo", 5),
                ("C_GetTokenInfo", 5),
                ("C_OpenSession", 5),
                ("C_Login", 0),
                ("C_Finalize", 1),
            ],
        ),
        // The proxy answers C_GetInfo itself; one login, the object search; p11-kit finalizes
        // the module at exit.
        (
            "pkcs11-tool",
            vec![
                ("C_Initialize", 1),
                ("C_GetInfo", 0),
                ("C_Login", 1),
                ("C_FindObjectsInit", 1),
                ("C_Finalize", 1),
            ],
        ),
    ] {
        let by_function = calls_by_function(recorder, &format!("process = '{process}'"))?;
        println!("{process}: {by_function:?}");
        expect_counts(process, &by_function, &expected)?;
    }
    Ok(())
}
