#!/usr/bin/env bash
# Builds the quorumkv container image on a machine whose Docker engine cannot pull images.
#
#   scripts/docker-image.sh            # -> image quorumkv:dev
#
# 1. The base image the Dockerfile names (debian:bookworm-slim) is made locally when missing:
#    debootstrap of Debian bookworm (minbase) from the Debian mirror this machine's apt already
#    uses (its sources under /etc/apt, or DEBIAN_MIRROR), trimmed, then `docker import`. A machine that can pull images already has it and skips this.
# 2. The quorumkv binary is built on the host, stripped, and copied into the Dockerfile's
#    `prebuilt` stage: the release profile, what users deploy, unless QUORUMKV_PROFILE=dev
#    (scripts/test.sh sets it: the tests' build, so CI does not compile RocksDB again).
# Users with a registry build the full multi-stage image instead: `docker build -t quorumkv .`
set -euo pipefail

cd "$(dirname "$0")/.."
default_profile=release
source scripts/profile.sh
image="${QUORUMKV_IMAGE:-quorumkv:dev}"
base_image="debian:bookworm-slim"

# The mirror of Debian's bookworm archive named in this machine's apt sources: the deb822
# `.sources` files (a `URIs:` field whose stanza's `Suites:` list bookworm) or one-line
# `deb URI bookworm ...` entries. No host is written here: the machine's configuration says
# which mirror (or proxy) it may reach.
apt_bookworm_mirror() {
    local file
    for file in /etc/apt/sources.list.d/*.sources; do
        [[ -r "$file" ]] || continue
        awk 'BEGIN { RS = ""; FS = "\n" }
            {
                uris = ""; suites = ""; deb = 0
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^Types:.*(^|[ \t])deb([ \t]|$)/) deb = 1
                    if ($i ~ /^URIs:/) { uris = $i; sub(/^URIs:[ \t]*/, "", uris) }
                    if ($i ~ /^Suites:/) { suites = " " $i " "; sub(/^Suites:/, "", suites) }
                }
                if (deb && suites ~ /[ \t]bookworm[ \t]/ && uris != "") { split(uris, u, /[ \t]+/); print u[1]; exit }
            }' "$file"
    done
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r "$file" ]] || continue
        awk '$1 == "deb" { i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } if ($(i + 1) == "bookworm") { print $i; exit } }' "$file"
    done
}
mirror="${DEBIAN_MIRROR:-$(apt_bookworm_mirror | head -n 1)}"

if [[ $(id -u) -eq 0 ]]; then sudo=(); else sudo=(sudo); fi

if ! docker image inspect "$base_image" >/dev/null 2>&1; then
    if [[ -z "$mirror" ]]; then
        echo "error: no Debian bookworm mirror in this machine's apt sources; set DEBIAN_MIRROR" >&2
        exit 1
    fi
    echo "building base image $base_image with debootstrap from $mirror (no registry here)"
    if ! command -v debootstrap >/dev/null; then
        "${sudo[@]}" apt-get update -qq
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
    fi
    rootfs=$(mktemp -d /var/tmp/quorumkv-rootfs.XXXXXX)
    trap '"${sudo[@]}" rm -rf "$rootfs"' EXIT
    "${sudo[@]}" debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
    # What a slim image leaves out: package lists, docs, man pages, locales, caches.
    "${sudo[@]}" rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
        "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*
    "${sudo[@]}" tar -C "$rootfs" -c . | docker import - "$base_image" >/dev/null
    "${sudo[@]}" rm -rf "$rootfs"
    trap - EXIT
fi

echo "building quorumkv, $profile profile"
cargo build --quiet --locked "${profile_flags[@]}" --bin quorumkv
context=target/docker-context
rm -rf "$context"
mkdir -p "$context"
strip -o "$context/quorumkv" "target/$profile_dir/quorumkv"
docker build --quiet --target prebuilt -f Dockerfile -t "$image" "$context" >/dev/null
size=$(docker image inspect --format '{{.Size}}' "$image")
echo "built $image ($((size / 1024 / 1024)) MiB; base $base_image $(($(docker image inspect --format '{{.Size}}' "$base_image") / 1024 / 1024)) MiB)"
