# p11trace — build, test, demo, bench. `just --list` shows every recipe.

set shell := ["bash", "-euo", "pipefail", "-c"]

softhsm := "/usr/lib/softhsm/libsofthsm2.so"

# Build every crate (debug profile: the tests use these binaries).
build:
    cargo build --workspace --all-targets

# Run the whole test suite: unit tests and end-to-end tests against real SoftHSM2, Kryoptic,
# pkcs11-tool, pkcs11-spy and DuckDB.
test: build kryoptic
    cargo test --workspace --no-fail-fast

# Build the Kryoptic PKCS#11 3.2 token the tests use (once; target/kryoptic/).
kryoptic:
    scripts/build-kryoptic.sh

# fmt + clippy, as required before every commit.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Install what the demo and the tests need on Debian 12 (SoftHSM2, OpenSC, GnuTLS tools, DuckDB CLI).
deps:
    #!/usr/bin/env bash
    set -euo pipefail
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    if ! command -v softhsm2-util >/dev/null || ! command -v pkcs11-tool >/dev/null || ! command -v p11tool >/dev/null; then
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq softhsm2 opensc gnutls-bin >/dev/null
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

# Benchmarks (issue 6 adds them; until then this says so).
bench *args:
    @echo "benchmarks land with the bench issue (#6); nothing to run yet" {{args}}
