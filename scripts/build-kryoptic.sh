#!/usr/bin/env bash
# Builds Kryoptic (a PKCS#11 3.2 software token, crates.io `kryoptic`) for the tests, once:
# target/kryoptic/libkryoptic_pkcs11.so. Debian 12 ships OpenSSL 3.0, so the default features
# (which want OpenSSL >= 3.2) are replaced by the set below (recipe: ../shared/providers/kryoptic.md).
# Needs: clang libclang-dev libssl-dev libsqlite3-dev pkg-config.
set -euo pipefail
cd "$(dirname "$0")/.."
version=1.5.4
out=target/kryoptic
lib=$out/libkryoptic_pkcs11.so
if [ -f "$lib" ] && [ "$(cat "$out/version" 2>/dev/null)" = "$version" ]; then
    exit 0
fi
mkdir -p "$out/fetch/src"
cat > "$out/fetch/Cargo.toml" <<TOML
[package]
name = "kryoptic-fetch"
version = "0.0.0"
edition = "2021"
publish = false
[dependencies]
kryoptic = "=$version"
[workspace]
TOML
echo 'fn main() {}' > "$out/fetch/src/main.rs"
(cd "$out/fetch" && cargo fetch -q)
manifest=$(cd "$out/fetch" && cargo metadata --format-version 1 | python3 -c '
import json, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "kryoptic":
        print(p["manifest_path"])')
features="kryoptic-lib/dynamic kryoptic-lib/sqlitedb kryoptic-lib/ecc_min kryoptic-lib/ec_montgomery kryoptic-lib/ffdh"
features="$features kryoptic-lib/hash_all kryoptic-lib/kdf_all kryoptic-lib/rsa kryoptic-lib/hotp kryoptic-lib/chacha20 kryoptic-lib/ike"
CARGO_TARGET_DIR="$PWD/$out/build" cargo build --release --manifest-path "$manifest" --no-default-features --features "$features"
cp "$out/build/release/libkryoptic_pkcs11.so" "$lib"
echo "$version" > "$out/version"
echo "built $lib"
