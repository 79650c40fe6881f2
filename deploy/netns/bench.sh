#!/usr/bin/env bash
# The benchmark across network namespaces: four replicas, each on its own
# "host" behind a link limited to MBIT Mbit/s, loaded from the root
# namespace (the clients' side), for each request/reply size given.
#
#   deploy/netns/bench.sh MBIT [SIZE...] [-- palisade-bench options]
#   deploy/netns/bench.sh 100 0 1024 -- --duration 10 --warmup 2
#
# SIZE is the request and reply size in bytes (default: 0 and 1024).
# PALISADE_SERVER_ARGS adds options to each replica (for example
# "--durability none"), PALISADE_KEYGEN_ARGS to the cluster's keygen (for
# example "--request-auth trust-primary").
# Results go to bench-results/netns-<MBIT>mbit-<SIZE>/ (no unreplicated
# baseline: it would run unshaped on loopback). Needs root,
# iproute2 and release builds of palisade-bench (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/../.."

mbit=${1:?usage: $0 MBIT [SIZE...] [-- palisade-bench options]}
shift
sizes=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do sizes+=("$1"); shift; done
[ $# -gt 0 ] && shift
[ ${#sizes[@]} -eq 0 ] && sizes=(0 1024)
bench=${PALISADE_BENCH:-target/release/palisade-bench}
palisade=${PALISADE_BIN:-target/release/palisade}
netns=deploy/netns/netns.sh
net=${PALISADE_NETNS_NET:-10.77.0}
# Namespaces of this run's own, so that cleaning up touches no other.
export PALISADE_NETNS=${PALISADE_NETNS:-pb$(($$ % 100000))}

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    "$netns" down
    rm -rf "$work"
}
trap cleanup EXIT

"$netns" up 4 "$mbit"
addresses=$(for i in 0 1 2 3; do printf '%s.%d:7000,' "$net" $((10 + i)); done)
for size in "${sizes[@]}"; do
    dir="$work/cluster-$size"
    "$palisade" keygen --replicas 4 --out "$dir" --addresses "${addresses%,}" ${PALISADE_KEYGEN_ARGS:-} >/dev/null
    pids=()
    for i in 0 1 2 3; do
        "$netns" exec "$i" "$bench" server --config "$dir" --id "$i" \
            --metrics-file "$dir/metrics-$i.json" --service echo ${PALISADE_SERVER_ARGS:-} \
            2>"$work/replica-$size-$i.log" &
        pids+=($!)
    done
    "$bench" --cluster "$dir" --request-bytes "$size" --reply-bytes "$size" \
        --no-baseline --out "bench-results/netns-${mbit}mbit-$size" "$@"
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
done
