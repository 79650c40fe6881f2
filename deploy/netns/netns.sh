#!/usr/bin/env bash
# Hosts on one machine: each replica in its own network namespace with its
# own address, joined through a bridge by veth pairs whose bandwidth `tc`
# limits. The bridge side has an address too, so programs in the root
# namespace (clients, the benchmark, an operator's `palisade status`) reach
# every replica across a shaped link. Needs root and iproute2.
#
#   netns.sh up N [MBIT]   replicas 0..N-1 at 10.77.0.(10+i), links of MBIT
#                          Mbit/s each way (default: unlimited)
#   netns.sh shape MBIT    change every link's limit (0: unlimited)
#   netns.sh cut I         pull replica I's cable (no traffic at all)
#   netns.sh heal I        plug it back
#   netns.sh partition I   replica I reaches clients but no other replica
#   netns.sh unpartition I
#   netns.sh exec I CMD... run CMD inside replica I's namespace
#   netns.sh down          remove every namespace, link and the bridge
#
# Names carry a prefix (PALISADE_NETNS, default "pal", at most 8 characters)
# so that two runs can coexist; addresses use 10.77.0.0/24, or
# PALISADE_NETNS_NET (3 octets).
set -euo pipefail

prefix=${PALISADE_NETNS:-pal}
net=${PALISADE_NETNS_NET:-10.77.0}
if [ ${#prefix} -gt 8 ]; then echo "PALISADE_NETNS: at most 8 characters" >&2; exit 2; fi
bridge="${prefix}-br"

ns() { echo "${prefix}-$1"; }
addr() { echo "$net.$((10 + $1))"; }
# The root-namespace end of replica I's cable, on the bridge.
outer() { echo "${prefix}-v$1"; }

# The ids of this prefix's namespaces.
ids() {
    ip netns list | awk '{print $1}' | sed -n "s/^${prefix}-\([0-9][0-9]*\)$/\1/p" | sort -n
}

# Token bucket on both ends of replica I's cable (egress of each side is
# the other side's ingress). The bucket holds 4 ms of traffic, at least
# 64 KiB, so that a burst of full-size segments is not dropped outright.
limit() {
    local i=$1 mbit=$2
    for dev in "$(outer "$i")" "ns:eth0"; do
        local run=()
        if [ "$dev" = ns:eth0 ]; then run=(ip netns exec "$(ns "$i")"); dev=eth0; fi
        "${run[@]}" tc qdisc del dev "$dev" root 2>/dev/null || true
        if [ "$mbit" -gt 0 ]; then
            local burst=$(( mbit * 1000000 / 8 / 250 ))
            [ "$burst" -lt 65536 ] && burst=65536
            "${run[@]}" tc qdisc add dev "$dev" root tbf rate "${mbit}mbit" burst "$burst" latency 20ms
        fi
    done
}

up() {
    local n=$1 mbit=${2:-0}
    ip link add "$bridge" type bridge
    ip addr add "$net.1/24" dev "$bridge"
    ip link set "$bridge" up
    # Where bridged traffic passes through iptables (br_netfilter, loaded
    # by Docker, whose FORWARD policy is DROP), let this bridge's through.
    if command -v iptables >/dev/null; then
        iptables -I FORWARD -i "$bridge" -o "$bridge" -j ACCEPT 2>/dev/null || true
    fi
    for i in $(seq 0 $((n - 1))); do
        ip netns add "$(ns "$i")"
        ip link add "$(outer "$i")" type veth peer name eth0 netns "$(ns "$i")"
        ip link set "$(outer "$i")" master "$bridge" up
        ip netns exec "$(ns "$i")" ip addr add "$(addr "$i")/24" dev eth0
        ip netns exec "$(ns "$i")" ip link set eth0 up
        ip netns exec "$(ns "$i")" ip link set lo up
        limit "$i" "$mbit"
    done
    echo "replicas at $(addr 0)..$(addr $((n - 1))), this namespace at $net.1; links: ${mbit:-0} Mbit/s (0: unlimited)"
}

down() {
    for i in $(ids); do
        ip netns del "$(ns "$i")" 2>/dev/null || true
    done
    ip link del "$bridge" 2>/dev/null || true
    if command -v iptables >/dev/null; then
        while iptables -D FORWARD -i "$bridge" -o "$bridge" -j ACCEPT 2>/dev/null; do :; done
    fi
}

case "${1:-}" in
    up) shift; up "$@" ;;
    down) down ;;
    shape) for i in $(ids); do limit "$i" "$2"; done ;;
    cut) ip link set "$(outer "$2")" down ;;
    heal) ip link set "$(outer "$2")" up ;;
    partition)
        # Drop replica-to-replica traffic on I's cable; the bridge address
        # (clients) still gets through, and so does I's own loopback.
        ip netns exec "$(ns "$2")" nft add table inet palisade_partition
        ip netns exec "$(ns "$2")" nft add chain inet palisade_partition out '{ type filter hook output priority 0; }'
        ip netns exec "$(ns "$2")" nft add chain inet palisade_partition in '{ type filter hook input priority 0; }'
        ip netns exec "$(ns "$2")" nft add rule inet palisade_partition out oifname "eth0" ip daddr != "$net.1" drop
        ip netns exec "$(ns "$2")" nft add rule inet palisade_partition in iifname "eth0" ip saddr != "$net.1" drop
        ;;
    unpartition) ip netns exec "$(ns "$2")" nft delete table inet palisade_partition ;;
    exec) i=$2; shift 2; exec ip netns exec "$(ns "$i")" "$@" ;;
    *) sed -n '2,20p' "$0" >&2; exit 2 ;;
esac
