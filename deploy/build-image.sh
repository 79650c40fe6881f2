#!/usr/bin/env bash
# Builds the Palisade container image from this checkout, FROM scratch:
# compiles `palisade` and `palisade-bench`, stages them with the shared
# libraries `ldd` says they load (at the paths the loader looks for), and
# runs `docker build` on that staging directory.
#
#   deploy/build-image.sh [--tag palisade:latest] [--from DIR]
#
# `--from target/debug` packs the binaries `cargo test` already built
# instead of building release ones (CI does this to save a release build);
# images for users are release builds.
set -euo pipefail
cd "$(dirname "$0")/.."

tag=palisade:latest
out=
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) tag=$2; shift 2 ;;
        --from) out=$2; shift 2 ;;
        *) echo "usage: $0 [--tag NAME:TAG] [--from DIR]" >&2; exit 2 ;;
    esac
done

if [ -z "$out" ]; then
    cargo build --quiet --release -p palisade -p palisade-bench
    out=target/release
fi

stage=target/image
rm -rf "$stage"
mkdir -p "$stage/rootfs/usr/local/bin" "$stage/data" "$stage/tmp"
chmod 1777 "$stage/tmp"
for bin in palisade palisade-bench; do
    # Line tables help a profiler; an image is smaller without them.
    strip --strip-debug -o "$stage/rootfs/usr/local/bin/$bin" "$out/$bin"
done
# Every library either binary loads, and the loader itself.
libs=$(ldd "$out/palisade" "$out/palisade-bench" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $1 !~ /:$/ { print $1 }' | sort -u)
# Host names are looked up through glibc's NSS, which loads its modules at
# run time (ldd cannot see them; glibc 2.34 and later build them in, older
# ones need the files), as nsswitch.conf says.
nss=$(dirname "$(echo "$libs" | grep '/libc\.so' | head -1)")
modules=$(ls "$nss"/libnss_dns.so.2 "$nss"/libnss_files.so.2 2>/dev/null || true)
if [ -n "$modules" ]; then
    # ... and what they load in turn (libresolv, before glibc 2.34).
    # shellcheck disable=SC2086
    libs="$libs $modules $(ldd $modules | awk '$2 == "=>" && $3 ~ /^\// { print $3 }')"
    libs=$(echo "$libs" | tr ' ' '\n' | sort -u)
fi
for lib in $libs; do
    mkdir -p "$stage/rootfs$(dirname "$lib")"
    cp -L "$lib" "$stage/rootfs$lib"
done
mkdir -p "$stage/rootfs/etc"
printf 'hosts: files dns\n' > "$stage/rootfs/etc/nsswitch.conf"
cp deploy/Dockerfile "$stage/Dockerfile"
docker build --quiet --tag "$tag" "$stage"
echo "built $tag: $(docker image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1 / 1e6}')"
