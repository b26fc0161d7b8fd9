# syntax=docker/dockerfile:1
# jwt-gate container image: multi-stage, small runtime, non-root, read-only root filesystem.
#   DOCKER_BUILDKIT=1 docker build -t jwt-gate .
#   docker run --read-only -p 8443:8443 -v $PWD/jwt-gate.toml:/etc/jwt-gate/jwt-gate.toml:ro jwt-gate
# The binary writes nothing to disk (logs go to stdout), so --read-only / Kubernetes'
# readOnlyRootFilesystem need no writable volume.

# ---- build: Debian bookworm's Rust image (same glibc as the runtime below) ----
# 1.88: the newest rust-version among the dependencies (tests/it/deploy.rs holds Cargo.toml to it)
FROM docker.io/library/rust:1.88-slim-bookworm AS build
# aws-lc-rs builds its C with the compiler only (no cmake, no Go needed)
RUN apt-get update && apt-get install -y --no-install-recommends gcc g++ make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
# BuildKit cache mounts: the registry and the compiled dependencies survive between builds,
# so a change to src/ recompiles the gate, not its 200 dependencies. The target directory is
# a cache, so the binary is copied out of it within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin jwt-gate \
    && strip -o /jwt-gate target/release/jwt-gate \
    && /jwt-gate --version

# ---- runtime: distroless glibc + libgcc, no shell, no package manager ----
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /jwt-gate /usr/local/bin/jwt-gate
# 65532 = distroless "nonroot"; numeric, so runAsNonRoot can verify it
USER 65532:65532
# 8443: the public listener; 9090: /healthz /readyz /metrics (admin)
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/jwt-gate"]
CMD ["run", "--config", "/etc/jwt-gate/jwt-gate.toml"]
