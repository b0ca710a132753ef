# p11trace — build, test, demo, bench. `just --list` shows every recipe.

set shell := ["bash", "-euo", "pipefail", "-c"]

softhsm := "/usr/lib/softhsm/libsofthsm2.so"

# Build every crate (debug profile: the tests use these binaries).
build:
    cargo build --workspace --all-targets

# Unit tests and end-to-end tests against real SoftHSM2, Kryoptic, pkcs11-tool, pkcs11-spy and
# DuckDB; the bench smoke run; the shim's instruction budget.
# Run the whole test suite.
test: build kryoptic release-shim
    cargo test --workspace --no-fail-fast

# The shim alone in release (small, ~1 min cold): the instruction-budget test measures what ships.
release-shim:
    cargo build --release -p p11trace-shim

# Build the Kryoptic PKCS#11 3.2 token the tests use (once; target/kryoptic/).
kryoptic:
    scripts/build-kryoptic.sh

# fmt + clippy, as required before every commit.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# What `just demo` needs and no more: SoftHSM2 (the token), OpenSC (pkcs11-tool), OpenSSL.
demo-deps:
    #!/usr/bin/env bash
    set -euo pipefail
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    missing=0
    for tool in softhsm2-util pkcs11-tool openssl; do command -v $tool >/dev/null || missing=1; done
    if [ $missing = 1 ]; then
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq softhsm2 opensc openssl >/dev/null
    fi

# SoftHSM2, OpenSC, GnuTLS tools, p11-kit, jq, valgrind, real clients (OpenSSL's engine, a JDK,
# chromium, python-pkcs11), DuckDB CLI, pyarrow, polars, moto_server, pyspark, prometheus-client;
# `.ci/run` installs the same, plus what building Kryoptic needs.
# Install what the tests and the benchmarks need on Debian 12.
deps: demo-deps
    #!/usr/bin/env bash
    set -euo pipefail
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    missing=0
    for tool in p11tool jq valgrind strace; do command -v $tool >/dev/null || missing=1; done
    # p11-kit's proxy module: the p11-kit import tests make real `log-calls` logs through it.
    [ -e /usr/lib/x86_64-linux-gnu/p11-kit-proxy.so ] || missing=1
    # Real clients traced in tests/tests/clients_*.rs: OpenSSL's pkcs11 engine, and a JDK
    # (java, javac, keytool) for SunPKCS11.
    [ -e /usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so ] || missing=1
    for tool in java javac keytool; do command -v $tool >/dev/null || missing=1; done
    # chromium: tests/tests/report_html.rs opens the HTML report in it, headless (~350 MB).
    command -v chromium >/dev/null || missing=1
    python3 -m pip --version >/dev/null 2>&1 || missing=1
    if [ $missing = 1 ]; then
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq gnutls-bin jq valgrind strace \
            p11-kit p11-kit-modules libengine-pkcs11-openssl openjdk-17-jdk-headless chromium python3-pip >/dev/null
    fi
    # From PyPI, pinned: the DuckDB CLI; pyarrow and polars (the README's Python examples);
    # python-pkcs11 (a real client, tests/tests/clients_python.rs); prometheus-client (its parser
    # reads the recorder's --metrics scrapes, tests/tests/metrics.rs). Debian's own python3 refuses
    # system-wide installs (PEP 668): then --break-system-packages (self-contained wheels).
    pins=()
    command -v duckdb >/dev/null || pins+=(duckdb-cli==1.5.6)
    python3 -c 'import pyarrow, polars' 2>/dev/null || pins+=(pyarrow==26.0.1 polars==2.1.0)
    python3 -c 'import pkcs11' 2>/dev/null || pins+=(python-pkcs11==0.10.1)
    # moto_server: the S3-compatible server of the object-storage tests (tests/src/s3.rs).
    command -v moto_server >/dev/null || pins+=('moto[server]==5.2.5')
    # Apache Spark, local mode, reading a dataset (tests/tests/engines.rs): 456 MB, ~33 s.
    python3 -c 'import pyspark' 2>/dev/null || pins+=(pyspark==4.3.0)
    python3 -c 'import prometheus_client' 2>/dev/null || pins+=(prometheus-client==0.26.0)
    if [ ${#pins[@]} -gt 0 ]; then
        python3 -m pip install -q --disable-pip-version-check "${pins[@]}" 2>/dev/null ||
            $sudo python3 -m pip install -q --disable-pip-version-check --break-system-packages "${pins[@]}"
    fi

# Generated from the binaries' clap definitions.
# Shell completions (bash, zsh, fish, elvish, PowerShell) for both binaries into target/completions/.
completions:
    cargo build -p p11trace-query -p p11trace-recorder --bins
    "${CARGO_TARGET_DIR:-target}"/debug/p11trace-query-docs completions target/completions
    "${CARGO_TARGET_DIR:-target}"/debug/p11trace-recorder-docs completions target/completions

# Man pages for p11trace-query (one per subcommand) and p11trace-recorder into target/man/.
man:
    cargo build -p p11trace-query -p p11trace-recorder --bins
    "${CARGO_TARGET_DIR:-target}"/debug/p11trace-query-docs man target/man
    "${CARGO_TARGET_DIR:-target}"/debug/p11trace-recorder-docs man target/man

# The main job end to end (scripts/demo.sh): a token, the recorder, pkcs11-tool and OpenSSL
# through the shim (keys, signatures verified, a decryption, a wrong PIN), then the analysis.
# A cold first build of the three binaries dominates (4 min 44 s on 2 idle cores); the run takes
# about a second and ends by naming the HTML report.
# Trace a real session end to end, then analyse it and write the HTML report.
demo: demo-deps
    cargo build -p p11trace-shim -p p11trace-recorder -p p11trace-query
    scripts/demo.sh "${CARGO_TARGET_DIR:-target}/debug" "${CARGO_TARGET_DIR:-target}/debug/libp11trace_shim.so"

# The demo in a container (needs a Docker engine): the multi-stage image of the Dockerfile, then
# `p11trace-demo` in it, its folder (dataset, report) in target/docker-demo/ on this machine.
docker-demo:
    docker build -t p11trace .
    mkdir -p target/docker-demo
    docker run --rm -v "$PWD/target/docker-demo:/out" -e P11TRACE_DEMO_DIR=/out p11trace p11trace-demo

# Release build (polars takes ~20 min cold): overhead vs pkcs11-spy, recorder throughput,
# bytes/call, query speed vs DuckDB, instruction budget, import speed, object-storage upload vs a
# local dataset (moto_server); one table, see BENCHMARKS.md. `just bench --only upload`: one.
# `just bench --quick` is the smoke mode; `just bench --help` lists the options.
# Run the benchmarks.
bench *args: deps kryoptic
    cargo build --release -p p11trace-shim -p p11trace-recorder -p p11trace-query -p p11trace-bench
    target/release/p11trace-bench {{args}}
