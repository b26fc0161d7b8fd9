# jwt-gate container image: multi-stage, small runtime, non-root, read-only root filesystem.
#   docker build -t jwt-gate .
#   docker run --read-only -p 8443:8443 -v $PWD/jwt-gate.toml:/etc/jwt-gate/jwt-gate.toml:ro jwt-gate
# The binary writes nothing to disk (logs go to stdout), so --read-only / Kubernetes'
# readOnlyRootFilesystem need no writable volume.

# ---- build: Debian bookworm's Rust image (same glibc as the runtime below) ----
FROM docker.io/library/rust:1.95-slim-bookworm AS build
# aws-lc-rs builds its C with the compiler only (no cmake, no Go needed)
RUN apt-get update && apt-get install -y --no-install-recommends gcc g++ make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# dependencies first, for layer caching
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches examples \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/hot_path.rs && echo 'fn main() {}' > examples/mint_tokens.rs \
    && cargo fetch --locked
COPY src ./src
RUN cargo build --release --locked --bin jwt-gate \
    && strip target/release/jwt-gate \
    && ./target/release/jwt-gate --version

# ---- runtime: distroless glibc + libgcc, no shell, no package manager ----
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/jwt-gate /usr/local/bin/jwt-gate
# 65532 = distroless "nonroot"; numeric, so runAsNonRoot can verify it
USER 65532:65532
# 8443: the public listener; 9090: /healthz /readyz /metrics (admin)
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/jwt-gate"]
CMD ["run", "--config", "/etc/jwt-gate/jwt-gate.toml"]
