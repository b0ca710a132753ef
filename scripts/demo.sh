#!/usr/bin/env bash
# The demo (`just demo`, and `p11trace-demo` in the Docker image): a SoftHSM2 token of its own,
# a recorder, pkcs11-tool and OpenSSL through the shim — key generation, RSA and ECDSA signatures
# verified, an RSA decryption, one wrong PIN — then the analysis of what was traced and its HTML
# report (the last line names it).
# Usage: scripts/demo.sh BIN_DIR SHIM   (BIN_DIR holds p11trace-recorder and p11trace-query)
# Everything it writes is under one fresh p11trace-demo.* folder in $P11TRACE_DEMO_DIR (default
# /tmp), which it names at the end.
set -euo pipefail
bin=${1:?usage: demo.sh BIN_DIR SHIM}
shim=${2:?usage: demo.sh BIN_DIR SHIM}
softhsm=${P11TRACE_DEMO_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
for tool in softhsm2-util pkcs11-tool openssl; do
    command -v "$tool" >/dev/null || { echo "demo: $tool is not installed (just deps)" >&2; exit 1; }
done
for file in "$bin/p11trace-recorder" "$bin/p11trace-query" "$shim" "$softhsm"; do
    [ -e "$file" ] || { echo "demo: $file does not exist (just build)" >&2; exit 1; }
done

work=$(mktemp -d "${P11TRACE_DEMO_DIR:-/tmp}/p11trace-demo.XXXXXX")
mkdir -p "$work/tokens" "$work/sock" && chmod 700 "$work/sock"
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$work" > "$work/softhsm2.conf"
export SOFTHSM2_CONF="$work/softhsm2.conf"
export P11TRACE_SOCKET="$work/sock/p11trace.sock" P11TRACE_MODULE="$softhsm"
softhsm2-util --init-token --free --label demo --so-pin So-Pin-4417 --pin User-Pin-8812 >/dev/null

"$bin/p11trace-recorder" --dataset "$work/dataset" 2> "$work/recorder.log" &
recorder=$!
trap 'kill "$recorder" 2>/dev/null || true' EXIT
until grep -q "listening on" "$work/recorder.log"; do
    kill -0 "$recorder" 2>/dev/null || { cat "$work/recorder.log" >&2; exit 1; }
    sleep 0.1
done

p11() { pkcs11-tool --module "$shim" --token-label demo "$@"; }
user=(--login --pin User-Pin-8812)
echo "== traced: pkcs11-tool --module $shim (P11TRACE_MODULE=$softhsm)"
echo "-- key generation: RSA 2048 and EC P-256"
p11 "${user[@]}" --keypairgen --key-type rsa:2048 --id 02 --label demo-rsa >/dev/null
p11 "${user[@]}" --keypairgen --key-type EC:prime256v1 --id 01 --label demo-ec >/dev/null
p11 --list-objects --type pubkey | grep -E "label|Usage" || true
echo "-- RSA signature (SHA256-RSA-PKCS), verified"
printf 'what the demo signs\n' > "$work/message"
p11 "${user[@]}" --sign --id 02 -m SHA256-RSA-PKCS --input-file "$work/message" --output-file "$work/message.rsa.sig" 2>/dev/null
p11 "${user[@]}" --verify --id 02 -m SHA256-RSA-PKCS --input-file "$work/message" --signature-file "$work/message.rsa.sig" 2>/dev/null
echo "-- ECDSA signature of the SHA-256 digest, verified"
openssl dgst -sha256 -binary "$work/message" > "$work/message.sha256"
p11 "${user[@]}" --sign --id 01 -m ECDSA --input-file "$work/message.sha256" --output-file "$work/message.ec.sig" 2>/dev/null
p11 "${user[@]}" --verify --id 01 -m ECDSA --input-file "$work/message.sha256" --signature-file "$work/message.ec.sig" 2>/dev/null
echo "-- RSA decryption of what OpenSSL encrypted to the token's public key"
p11 --read-object --type pubkey --id 02 -o "$work/rsa.pub.der" >/dev/null 2>&1
openssl pkeyutl -encrypt -pubin -keyform DER -inkey "$work/rsa.pub.der" -in "$work/message" -out "$work/message.enc"
p11 "${user[@]}" --decrypt --id 02 -m RSA-PKCS --input-file "$work/message.enc" --output-file "$work/message.dec" 2>/dev/null
cmp -s "$work/message" "$work/message.dec" && echo "decrypted: the same bytes"
echo "-- one wrong PIN (the analysis counts it as a failure)"
p11 --login --pin Not-The-Pin --list-objects >/dev/null 2>&1 || echo "pkcs11-tool: CKR_PIN_INCORRECT, as expected"

kill -TERM "$recorder"; wait "$recorder" || true
trap - EXIT
echo "== the recorder's summary"
cat "$work/recorder.log"
echo "== p11trace-query analyze $work/dataset"
"$bin/p11trace-query" analyze "$work/dataset"
"$bin/p11trace-query" report "$work/dataset" -o "$work/report.html"
echo "== the dataset: $work/dataset (DuckDB, polars, pyarrow read it: see the README)"
echo "HTML report: $work/report.html"
