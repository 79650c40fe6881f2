#!/usr/bin/env bash
# Runs every configuration docs/benchmarks.md reports, one after another, on
# an otherwise idle machine, then renders the table from the results.
# Usage: scripts/bench-all.sh [SECONDS] [OUT]   (default 10 s per run, bench-results/all)
# REPEAT=N (default 3) repeats every run that has a baseline N times, A B A B,
# and the table shows the median ratio with its spread.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
out=${2:-bench-results/all}
cargo build --release -p palisade-bench --quiet
bench=./target/release/palisade-bench
repeat=${REPEAT:-3}
run() {
    local name=$1; shift
    local times=(--repeat "$repeat")
    [[ " $* " == *" --no-baseline "* ]] && times=()
    echo "=== $name: $*" >&2
    "$bench" --duration "$secs" --warmup 3 --out "$out/$name" "${times[@]}" "$@" 2>/dev/null | tail -1
}
# The table's runs keep the replicas in memory and trust the primary with
# requests, as the table was first measured (both named in the table); the
# authentication, durability and large-state runs at the end show the
# defaults.
mem=(--durability none --request-auth trust-primary)
run bft-n4-0-0 "${mem[@]}"
run bft-n4-100-100 --request-bytes 100 --reply-bytes 100 "${mem[@]}"
run bft-n4-1024-1024 --request-bytes 1024 --reply-bytes 1024 "${mem[@]}"
run bft-n4-4096-4096 --request-bytes 4096 --reply-bytes 4096 "${mem[@]}"
run cft-n3-0-0 --mode cft --replicas 3 "${mem[@]}"
run cft-n4-0-0 --mode cft --replicas 4 "${mem[@]}"
run bft-n7-0-0 --replicas 7 --no-baseline "${mem[@]}"
run bft-n10-0-0 --replicas 10 --no-baseline "${mem[@]}"
run bft-n4-0-0-signed "${mem[@]}" --request-auth signatures
run bft-n4-100-100-signed --request-bytes 100 --reply-bytes 100 "${mem[@]}" --request-auth signatures
run bft-n4-0-0-authenticators "${mem[@]}" --request-auth authenticators
run bft-n4-latency-1x1 --clients 1 --outstanding 1 --no-baseline "${mem[@]}"
run bft-n4-sweep --sweep 1x1,1x8,2x16,4x16,4x32,4x64,8x64,16x64,80x64 --no-baseline "${mem[@]}"
run bft-n4-kill-primary --kill-primary-at 4 --restart-at 8 --no-baseline
python3 scripts/bench-table.py "$out" > "$out/table.md"
# Durability and large state (docs/benchmarks.md): their own summaries,
# outside the table's directory.
for size in 0 1024; do
    echo "=== request authentication, $size/$size" >&2
    "$bench" --compare-auth trust-primary,authenticators,signatures --rounds 3 --sweep 16x128 --duration "$secs" \
        --warmup 2 --durability none --request-bytes "$size" --reply-bytes "$size" --out "$out-auth-$size" 2>/dev/null | tail -6
done
echo "=== durability modes" >&2
"$bench" --compare-durability none,log,full --rounds 3 --sweep 4x64,16x128 --duration "$secs" --warmup 2 \
    --out "$out-durability" 2>/dev/null | tail -6
kv=(--service kv --value-bytes 4096 --read-percent 50 --sweep 16x64 --no-baseline --warmup 3)
for keys in 256 262144; do
    echo "=== kv, $keys keys of 4 KiB" >&2
    "$bench" "${kv[@]}" --keys "$keys" --duration "$secs" --out "$out-kv-$keys" 2>/dev/null | tail -1
done
echo "=== kv 1 GiB: a replica restarted with an empty disk" >&2
"$bench" "${kv[@]}" --keys 262144 --duration 40 --kill-primary-at 5 --restart-at 8 --restart-empty \
    --out "$out-kv-transfer" 2>/dev/null | grep -E "killed|BENCH"
echo "=== kv 1 GiB: every replica killed at once" >&2
"$bench" "${kv[@]}" --keys 262144 --duration 40 --kill-all-at 5 --restart-at 6 \
    --out "$out-kv-crash-all" 2>/dev/null | grep -E "killed|BENCH"
# The file system (docs/benchmarks.md, "The file system"): the compiler and
# the servers sharing every core, then on cores of their own as BFS ran them.
for split in "" --split-cores; do
    echo "=== andrew ${split:-(shared cores)}" >&2
    "$bench" andrew --rounds 5 --durability none $split --out "$out-andrew${split:+-split}" 2>/dev/null | tail -10
done
echo "table: $out/table.md" >&2
