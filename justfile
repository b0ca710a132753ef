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

# SoftHSM2, OpenSC, GnuTLS tools, p11-kit, jq, valgrind, DuckDB CLI; `.ci/run` installs the same, plus
# what building Kryoptic needs.
# Install what the demo, the tests and the benchmarks need on Debian 12.
deps:
    #!/usr/bin/env bash
    set -euo pipefail
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    missing=0
    for tool in softhsm2-util pkcs11-tool p11tool jq valgrind strace; do command -v $tool >/dev/null || missing=1; done
    # p11-kit's proxy module: the p11-kit import tests make real `log-calls` logs through it.
    [ -e /usr/lib/x86_64-linux-gnu/p11-kit-proxy.so ] || missing=1
    if [ $missing = 1 ]; then
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq softhsm2 opensc gnutls-bin jq valgrind strace \
            p11-kit p11-kit-modules >/dev/null
    fi
    command -v duckdb >/dev/null || python3 -m pip install -q duckdb-cli==1.5.6

# The main job end to end: recorder up, pkcs11-tool through the shim, recorder down, analysis.
demo: deps build
    #!/usr/bin/env bash
    set -euo pipefail
    work=$(mktemp -d /tmp/p11trace-demo.XXXXXX)
    mkdir -p "$work/tokens" "$work/sock" && chmod 700 "$work/sock"
    printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$work" > "$work/softhsm2.conf"
    export SOFTHSM2_CONF="$work/softhsm2.conf"
    softhsm2-util --init-token --free --label demo --so-pin So-Pin-4417 --pin User-Pin-8812 >/dev/null
    target/debug/p11trace-recorder --dataset "$work/dataset" --socket "$work/sock/p11trace.sock" 2> "$work/recorder.log" &
    recorder=$!
    until grep -q "listening on" "$work/recorder.log"; do sleep 0.1; done
    echo "== pkcs11-tool --test, traced (P11TRACE_MODULE={{softhsm}})"
    P11TRACE_MODULE={{softhsm}} P11TRACE_SOCKET="$work/sock/p11trace.sock" \
        pkcs11-tool --module target/debug/libp11trace_shim.so --token-label demo --login --pin User-Pin-8812 --test
    P11TRACE_MODULE={{softhsm}} P11TRACE_SOCKET="$work/sock/p11trace.sock" \
        pkcs11-tool --module target/debug/libp11trace_shim.so --token-label demo --login --pin User-Pin-8812 \
        --keypairgen --key-type EC:prime256v1 --id 01 --label demo-ec >/dev/null
    kill -TERM "$recorder"; wait "$recorder" || true
    cat "$work/recorder.log"
    echo "== dataset: $work/dataset"
    target/debug/p11trace-query analyze "$work/dataset"

# Release build (polars takes ~20 min cold): overhead vs pkcs11-spy, recorder throughput,
# bytes/call, query speed vs DuckDB, instruction budget; one table, see BENCHMARKS.md.
# `just bench --quick` is the smoke mode; `just bench --help` lists the options.
# Run the benchmarks.
bench *args: deps kryoptic
    cargo build --release -p p11trace-shim -p p11trace-recorder -p p11trace-query -p p11trace-bench
    target/release/p11trace-bench {{args}}
