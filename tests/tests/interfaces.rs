//! PKCS#11 3.x interfaces: calls through Kryoptic's 3.0 and 3.2 function tables — 3.x-only
//! functions included — are traced, with the real module's versions; a vendor interface passes
//! through untraced, exactly as the module offers it, and the record says so.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use p11trace_tests::*;
use serde_json::json;

#[test]
fn three_x_interfaces_of_kryoptic_are_traced_including_3x_only_functions() -> Result<()> {
    let traced = Traced::on(Provider::Kryoptic, "interfaces")?.run_client(
        &["interfaces", USER_PIN],
        &[],
        Duration::from_secs(60),
    )?;
    let (recorder, report) = (traced.recorder(), &traced.reports);
    let interfaces = report[0]["interfaces"].as_array().context("interfaces")?;
    ensure!(
        interfaces.len() == 2 && interfaces.iter().all(|i| i["session_cancel"] == 0),
        "{report:?}"
    );
    for version in ["3.0", "3.2"] {
        let rows = duckdb(&format!(
            "SELECT func, rv FROM {} WHERE interface_version = '{version}' AND func IN ('C_LoginUser', 'C_SessionCancel', 'C_OpenSession')",
            recorder.table("calls")
        ))?;
        let funcs: Vec<&str> = rows.iter().filter_map(|r| r["func"].as_str()).collect();
        for func in ["C_LoginUser", "C_SessionCancel", "C_OpenSession"] {
            ensure!(
                funcs.contains(&func),
                "{func} through the {version} table was not traced: {rows:?}"
            );
        }
    }
    // The reported versions are the real module's, and every call the client made is a row.
    ensure!(interfaces[1]["reported_version"] == "3.2", "{report:?}");
    let Tally { rows, internal, .. } = traced.tally;
    ensure!(
        rows - internal == traced.calls(),
        "rows {rows} (internal {internal}) vs {report:?}"
    );
    Ok(())
}

#[test]
fn vendor_interfaces_pass_through_untraced_and_the_record_says_so() -> Result<()> {
    let mut traced = Traced::on(Provider::Kryoptic, "vendor")?;
    let dir = temp();
    let interface_list = |module: &std::path::Path, log: &str| {
        let mut command = traced.token.client(module, &["interface-list"]);
        Oracle::Count.env(&mut command, &kryoptic(), &dir.path().join(log));
        command
    };
    let mut direct = interface_list(&p11count(), "direct.log");
    let direct = client_reports(&run(&mut direct, Duration::from_secs(60))?)?.remove(0);
    let mut through_shim = interface_list(&shim(), "traced.log");
    traced.recorder.shim_env(&mut through_shim, p11count());
    let through_shim = client_reports(&run(&mut through_shim, Duration::from_secs(60))?)?.remove(0);
    traced.recorder.stop()?;
    // The caller sees exactly the interfaces and versions the module offers, and the vendor one works.
    ensure!(
        direct["interfaces"] == through_shim["interfaces"],
        "{direct} vs {through_shim}"
    );
    ensure!(
        through_shim["interfaces"]
            .as_array()
            .is_some_and(|i| i.len() == 3),
        "{through_shim}"
    );
    ensure!(through_shim["vendor_ping"] == 42, "{through_shim}");
    // Its call went straight to the module (the oracle saw it), the shim recorded none.
    ensure!(std::fs::read_to_string(dir.path().join("traced.log"))?.contains("Vendor_Ping 42"));
    let rows = duckdb(&format!(
        "SELECT a.value AS v FROM (SELECT unnest(attrs) AS a FROM {} WHERE func = 'C_GetInterfaceList' AND out_len = 3) WHERE a.type = 'untracedInterface'",
        traced.recorder.table("calls")
    ))?;
    ensure!(
        rows.len() == 1 && rows[0]["v"] == "Vendor p11count",
        "{rows:?}"
    );
    Ok(())
}

#[test]
fn traced_tables_claim_no_newer_version_than_their_layout_and_same_version_twins_stay_apart()
-> Result<()> {
    let mut traced = Traced::on(Provider::Kryoptic, "twins")?;
    let dir = temp();
    // p11count offers, beside 3.2, 3.0 and its vendor interface, a 3.5 one (first) and a second
    // 3.0 one with CKF_INTERFACE_FORK_SAFE and a table of its own (last).
    let twins = |module: &std::path::Path, log: &str| {
        let mut command = traced.token.client(module, &["interface-twins"]);
        Oracle::Count.env(&mut command, &kryoptic(), &dir.path().join(log));
        command.env("P11COUNT_INTERFACES", "more");
        command
    };
    let mut direct = twins(&p11count(), "direct.log");
    let direct = client_reports(&run(&mut direct, Duration::from_secs(60))?)?.remove(0);
    let mut through_shim = twins(&shim(), "traced.log");
    traced.recorder.shim_env(&mut through_shim, p11count());
    let through_shim = client_reports(&run(&mut through_shim, Duration::from_secs(60))?)?.remove(0);
    traced.recorder.stop()?;
    let versions = |report: &serde_json::Value| -> Vec<(String, String, i64)> {
        report["interfaces"]
            .as_array()
            .map(|all| {
                all.iter()
                    .map(|i| {
                        let text = |key: &str| i[key].as_str().unwrap_or("").to_owned();
                        (
                            text("name"),
                            text("version"),
                            i["flags"].as_i64().unwrap_or(-1),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let offered = versions(&direct);
    ensure!(
        offered.len() == 5
            && offered[0].1 == "3.5"
            && offered[4] == ("PKCS 11".into(), "3.0".into(), 1),
        "{direct}"
    );
    // The 3.5 table is traced through the 3.2 layout, so its twin says 3.2 (a caller trusting 3.5
    // would read past the traced table); everything else exactly as offered.
    let mut expected = offered.clone();
    expected[0].1 = "3.2".into();
    ensure!(
        versions(&through_shim) == expected,
        "{:?} vs {expected:?}",
        versions(&through_shim)
    );
    // Five interfaces, five tables: the two 3.0 ones are traced apart, not collapsed into one.
    ensure!(
        direct["distinct_lists"] == 5 && through_shim["distinct_lists"] == 5,
        "{direct} vs {through_shim}"
    );
    // C_GetInterface with and without the flag answers each with its own flags and table.
    let answers = json!([{ "asked": 0, "flags": 0 }, { "asked": 1, "flags": 1 }]);
    ensure!(
        direct["get_interface"] == answers && through_shim["get_interface"] == answers,
        "{direct} vs {through_shim}"
    );
    ensure!(
        through_shim["get_interface_distinct_lists"] == 2,
        "{through_shim}"
    );
    Ok(())
}
