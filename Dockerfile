# quorumkv container image.
#
# With a registry and BuildKit (Docker 23+): `docker build -t quorumkv .` compiles a release
# binary in the `builder` stage and copies it into the slim runtime stage.
# Without a registry (CI, air-gapped hosts): `scripts/docker-image.sh` makes the base image
# locally and builds `--target prebuilt` from a binary compiled on the host; the `builder`
# stage is not built. Stages are ordered so that even the legacy builder, which builds every
# stage before its target, never needs the Rust image for `prebuilt`.

# ---- runtime: what every variant of the image shares ----
FROM debian:bookworm-slim AS runtime
# A fixed non-root uid, so a volume's ownership is predictable across hosts.
RUN groupadd --system --gid 10001 quorumkv \
 && useradd --system --uid 10001 --gid quorumkv --home-dir /data --no-create-home quorumkv \
 && mkdir -p /data && chown quorumkv:quorumkv /data
# Listen on all interfaces inside the container; peers and clients reach it by its name
# (set QUORUMKV_ADVERTISE_CLIENT_ADDR / QUORUMKV_ADVERTISE_PEER_ADDR to that name).
ENV QUORUMKV_DATA_DIR=/data \
    QUORUMKV_CLIENT_ADDR=0.0.0.0:8080 \
    QUORUMKV_PEER_ADDR=0.0.0.0:9080 \
    QUORUMKV_ENDPOINTS=127.0.0.1:8080
VOLUME /data
# 8080: client HTTP API; 9080: Raft and node-to-node traffic (keep it off public networks).
EXPOSE 8080 9080
USER quorumkv
WORKDIR /data
# `quorumkv health` asks /health on QUORUMKV_ENDPOINTS: no curl needed in the image.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 CMD ["quorumkv", "health"]
# SIGTERM (docker stop, Kubernetes) runs the graceful shutdown: leadership handed over, drain.
STOPSIGNAL SIGTERM
ENTRYPOINT ["quorumkv"]
CMD ["serve"]

# ---- prebuilt: the runtime with a binary from the build context (scripts/docker-image.sh) ----
FROM runtime AS prebuilt
COPY --chown=root:root quorumkv /usr/local/bin/quorumkv

# ---- builder: a release build, for users with a registry ----
FROM rust:1-bookworm AS builder
RUN apt-get update && apt-get install -y --no-install-recommends clang libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY src src
COPY tests tests
RUN cargo build --release --locked --bin quorumkv && strip target/release/quorumkv

# ---- default: the runtime with the release binary ----
FROM runtime AS release
COPY --from=builder /src/target/release/quorumkv /usr/local/bin/quorumkv
