#!/usr/bin/env bash
# Runs every wire fuzz target for SECONDS each (default 60) with nightly and
# cargo-fuzz (`cargo install cargo-fuzz`). New inputs that raise coverage go
# to framework/wire/fuzz/corpus/<target>/; crashes to .../artifacts/<target>/.
# A single allocation above 64 MiB counts as a failure.
set -euo pipefail
cd "$(dirname "$0")/../framework/wire"
seconds=${1:-60}
status=0
for target in $(cargo +nightly fuzz list); do
    echo "=== $target (${seconds}s)"
    if ! cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=64 2>&1 \
        | grep -E "^(Done|==[0-9]+== ERROR|SUMMARY)|panicked|crash-"; then
        :
    fi
    if [ -n "$(ls -A "fuzz/artifacts/$target" 2>/dev/null)" ]; then
        echo "$target: crashes in fuzz/artifacts/$target" >&2
        status=1
    fi
done
exit $status
