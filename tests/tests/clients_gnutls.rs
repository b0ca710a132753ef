//! GnuTLS's `p11tool --provider <shim>` on SoftHSM2: `--list-tokens` and `--list-all --login`
//! (PIN from `GNUTLS_PIN`) and `--generate-privkey ecdsa` print exactly what they print direct
//! (the generated public key aside) and exit 0, and the dataset holds the calls p11tool is known
//! to make: the token walk without a login, then a login per session it opens for the object
//! listing, the objects' labels read back, the EC key pair generated with its label, each run on
//! one thread.

use anyhow::{Result, ensure};
use p11trace_tests::clients::*;
use p11trace_tests::*;

#[test]
fn p11tool_lists_the_same_through_the_shim_and_its_calls_are_recorded() -> Result<()> {
    let mut traced = traced_with_keys("gnutls")?;
    let url = format!("pkcs11:token={}", traced.token.label);
    let keep = |s: String| s;
    let list_tokens = same_both_ways(
        &traced.token,
        "p11tool --list-tokens",
        &mut |through_shim| {
            if through_shim {
                traced.p11tool(&["--list-tokens"])
            } else {
                let mut command = traced.token.command("p11tool");
                command.args(["--provider", SOFTHSM, "--list-tokens"]);
                command
            }
        },
        &keep,
    )?;
    ensure!(
        stdout_of(&list_tokens).contains("Label: gnutls")
            && stdout_of(&list_tokens).contains("Manufacturer: SoftHSM project"),
        "the token is not listed: {}",
        stdout_of(&list_tokens)
    );
    let list_all = same_both_ways(
        &traced.token,
        "p11tool --list-all --login",
        &mut |through_shim| {
            let mut command = if through_shim {
                traced.p11tool(&["--list-all", "--login", &url])
            } else {
                let mut command = traced.token.command("p11tool");
                command.args(["--provider", SOFTHSM, "--list-all", "--login", &url]);
                command
            };
            command.env("GNUTLS_PIN", USER_PIN);
            command
        },
        &keep,
    )?;
    for listed in [
        "Type: Private key (RSA-2048)",
        "Type: Private key (EC/ECDSA-SECP256R1)",
        "Label: rsa1",
        "Label: ec1",
        "Type: X.509 Certificate",
    ] {
        ensure!(
            stdout_of(&list_all).contains(listed),
            "`{listed}` is not listed: {}",
            stdout_of(&list_all)
        );
    }

    // A key pair generated on the token: the public key printed differs every run.
    let pem_masked = |s: String| {
        s.lines()
            .map(|l| {
                if !l.starts_with("-----")
                    && l.len() > 40
                    && l.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c))
                {
                    "<base64>"
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let generate = [
        "--generate-privkey",
        "ecdsa",
        "--curve",
        "secp256r1",
        "--label",
        "gen1",
        "--login",
        &url,
    ];
    let generated = same_both_ways(
        &traced.token,
        "p11tool --generate-privkey",
        &mut |through_shim| {
            let mut command = if through_shim {
                traced.p11tool(&generate)
            } else {
                let mut command = traced.token.command("p11tool");
                command.args(["--provider", SOFTHSM]).args(generate);
                command
            };
            command.env("GNUTLS_PIN", USER_PIN);
            command
        },
        &pem_masked,
    )?;
    ensure!(
        stdout_of(&generated).starts_with("-----BEGIN PUBLIC KEY-----"),
        "no public key printed: {}",
        stdout_of(&generated)
    );

    stop_clean(&mut traced.recorder)?;
    let recorder = &traced.recorder;
    let generator = one_pid(recorder, "func = 'C_GenerateKeyPair'")?;
    let lister = one_pid(
        recorder,
        &format!("func = 'C_Login' AND pid <> {generator}"),
    )?;
    let walker = one_pid(
        recorder,
        &format!("process = 'p11tool' AND pid NOT IN ({lister}, {generator})"),
    )?;

    // --list-tokens: every slot and its token, a session tried on each, never a login.
    let walk = calls_by_function(recorder, &format!("pid = {walker}"))?;
    println!("p11tool --list-tokens: {walk:?}");
    expect_counts(
        "p11tool --list-tokens",
        &walk,
        &[
            ("C_Initialize", 1),
            ("C_GetInfo", 1),
            ("C_GetSlotList", 4),
            ("C_GetSlotInfo", 5),
            ("C_GetTokenInfo", 5),
            ("C_OpenSession", 5),
            ("C_CloseSession", 4),
            ("C_Login", 0),
            ("C_FindObjectsInit", 0),
            ("C_Finalize", 1),
        ],
    )?;
    // The free slot's uninitialised token refuses the session.
    ensure!(
        count_where(
            recorder,
            &format!(
                "pid = {walker} AND func = 'C_OpenSession' AND rv_name = 'CKR_TOKEN_NOT_RECOGNIZED'"
            )
        )? == 1,
        "no refused session on the free slot"
    );

    // --list-all --login (seven objects: two key pairs, two certificates, an AES key): every
    // session but the two of the token walk logs in, as the user; a search in each; the labels
    // read back (allowlisted values). Counts measured with GnuTLS 3.7.9 (Debian 12).
    let list = calls_by_function(recorder, &format!("pid = {lister}"))?;
    println!("p11tool --list-all --login: {list:?}");
    expect_counts(
        "p11tool --list-all --login",
        &list,
        &[
            ("C_Initialize", 1),
            ("C_Login", 7),
            ("C_OpenSession", 9),
            ("C_CloseSession", 9),
            ("C_GetSessionInfo", 8),
            ("C_FindObjectsInit", 8),
            ("C_FindObjectsFinal", 8),
            ("C_Finalize", 1),
        ],
    )?;
    let logins = duckdb(&format!(
        "SELECT DISTINCT user_type, rv_name, in_len FROM {} WHERE pid = {lister} AND func = 'C_Login'",
        recorder.table("calls")
    ))?;
    ensure!(
        logins.len() == 1
            && logins[0]["user_type"] == "CKU_USER"
            && logins[0]["rv_name"] == "CKR_OK"
            && logins[0]["in_len"] == USER_PIN.len() as i64,
        "logins: {logins:?}"
    );
    let labels = duckdb(&format!(
        "SELECT DISTINCT a.value AS v FROM (SELECT unnest(attrs) AS a FROM {} WHERE pid = {lister} AND func = 'C_GetAttributeValue' AND rv = 0) WHERE a.template = 'out' AND a.type = 'CKA_LABEL' ORDER BY 1",
        recorder.table("calls")
    ))?;
    let labels: Vec<&str> = labels.iter().filter_map(|r| r["v"].as_str()).collect();
    ensure!(
        labels.contains(&RSA) && labels.contains(&EC),
        "labels read back: {labels:?}"
    );

    // --generate-privkey: one EC key pair, the label in the private template, both handles out.
    let pairs = duckdb(&format!(
        "SELECT mechanism, rv_name, len(out_objects) AS handles, list_filter(attrs, lambda a: a.template = 'private' AND a.type = 'CKA_LABEL') AS label FROM {} WHERE pid = {generator} AND func = 'C_GenerateKeyPair'",
        recorder.table("calls")
    ))?;
    ensure!(
        pairs.len() == 1
            && pairs[0]["mechanism"] == "CKM_EC_KEY_PAIR_GEN"
            && pairs[0]["rv_name"] == "CKR_OK"
            && pairs[0]["handles"] == 2
            && pairs[0]["label"][0]["value"] == "gen1",
        "C_GenerateKeyPair: {pairs:?}"
    );
    let threads = count_of(&format!(
        "SELECT count(DISTINCT tid) AS n FROM {} WHERE process = 'p11tool'",
        recorder.table("calls")
    ))?;
    ensure!(
        threads == 3,
        "each p11tool runs on one thread: {threads} tids"
    );
    Ok(())
}
