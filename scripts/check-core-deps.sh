#!/usr/bin/env bash
# The protocol core must stay pure: no async runtime, actor framework, thread
# pool, socket library or OS randomness among its (normal) dependencies.
# Clippy's disallowed-types/methods in framework/core/clippy.toml cover the
# standard library side (clocks, threads, files, sockets, random hash maps).
set -euo pipefail
cd "$(dirname "$0")/.."
forbidden='^(tokio|actix|actix-rt|actix-web|async-std|smol|mio|socket2|rayon|rayon-core|crossbeam.*|flume|parking_lot|getrandom|rand|rand_core|rand_chacha|nix|ed25519-dalek|hmac)$'
deps=$(cargo tree -p palisade-core -e normal --prefix none --format '{p}' | awk '{print $1}' | sort -u)
bad=$(echo "$deps" | grep -E "$forbidden" || true)
if [ -n "$bad" ]; then
    echo "palisade-core must not depend on: $bad" >&2
    exit 1
fi
echo "palisade-core dependencies are pure: $(echo $deps | tr '\n' ' ')"
