#!/usr/bin/env bash
# Builds the quorumkv container image on a machine whose Docker engine cannot pull images.
#
#   scripts/docker-image.sh            # -> image quorumkv:dev
#
# 1. The base image the Dockerfile names (debian:bookworm-slim) is made locally when missing:
#    debootstrap of Debian bookworm (minbase) from Debian's package mirror, trimmed, then
#    `docker import`. A machine that can pull images already has it and skips this.
# 2. The quorumkv binary is built on the host (the same dev profile the tests use, so RocksDB
#    is not compiled again), stripped, and copied into the Dockerfile's `prebuilt` stage.
# Users with a registry build the full multi-stage image instead: `docker build -t quorumkv .`
set -euo pipefail

cd "$(dirname "$0")/.."
image="${QUORUMKV_IMAGE:-quorumkv:dev}"
base_image="debian:bookworm-slim"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if [[ $(id -u) -eq 0 ]]; then sudo=(); else sudo=(sudo); fi

if ! docker image inspect "$base_image" >/dev/null 2>&1; then
    echo "building base image $base_image with debootstrap (no registry here)"
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

cargo build --locked --bin quorumkv
context=target/docker-context
rm -rf "$context"
mkdir -p "$context"
strip -o "$context/quorumkv" target/debug/quorumkv
docker build --quiet --target prebuilt -f Dockerfile -t "$image" "$context" >/dev/null
size=$(docker image inspect --format '{{.Size}}' "$image")
echo "built $image ($((size / 1024 / 1024)) MiB; base $base_image $(($(docker image inspect --format '{{.Size}}' "$base_image") / 1024 / 1024)) MiB)"
