#!/usr/bin/env bash
# Runs every configuration docs/benchmarks.md reports, one after another, on
# an otherwise idle machine, then renders the table from the results.
# Usage: scripts/bench-all.sh [SECONDS] [OUT]   (default 10 s per run, bench-results/all)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
out=${2:-bench-results/all}
cargo build --release -p palisade-bench --quiet
bench=./target/release/palisade-bench
run() {
    local name=$1; shift
    echo "=== $name: $*" >&2
    "$bench" --duration "$secs" --warmup 3 --out "$out/$name" "$@" 2>/dev/null | tail -1
}
run bft-n4-0-0
run bft-n4-100-100 --request-bytes 100 --reply-bytes 100
run bft-n4-1024-1024 --request-bytes 1024 --reply-bytes 1024
run bft-n4-4096-4096 --request-bytes 4096 --reply-bytes 4096
run cft-n3-0-0 --mode cft --replicas 3
run cft-n4-0-0 --mode cft --replicas 4
run bft-n7-0-0 --replicas 7 --no-baseline
run bft-n10-0-0 --replicas 10 --no-baseline
run bft-n4-0-0-signed --client-signatures
run bft-n4-100-100-signed --client-signatures --request-bytes 100 --reply-bytes 100
run bft-n4-latency-1x1 --clients 1 --outstanding 1 --no-baseline
run bft-n4-sweep --sweep 1x1,1x8,2x16,4x16,4x32,4x64,8x64,16x64,80x64 --no-baseline
run bft-n4-kill-primary --kill-primary-at 4 --restart-at 8 --no-baseline
python3 scripts/bench-table.py "$out" > "$out/table.md"
echo "table: $out/table.md" >&2
