# syntax=docker/dockerfile:1
# media-api container image.
#
# - Multi-stage: the dependency layer is built from a stub crate with the real Cargo.toml/Cargo.lock,
#   so it is reused until the manifest or the lock file change; editing src/ only rebuilds the crate.
# - Runtime: distroless (no shell, no package manager), numeric non-root user 65532 (so Kubernetes'
#   runAsNonRoot can verify it), nothing written to the root filesystem in the production profile
#   (run it with a read-only root filesystem), HEALTHCHECK through the binary itself.
# - No OpenSSL anywhere: TLS is rustls (ring; the AWS SDK's client uses aws-lc-rs, built from C by
#   cc, no cmake), so the cc base (glibc + libgcc) is all it needs at run time.
#
# Build: docker build -t media-api .        Run: see deploy/README.md and docs/operations.md.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
# 0 for a RUNTIME_IMAGE older than glibc 2.36 (build.rs: packed relocations need it).
ARG MEDIA_API_LINK_RELR=1
WORKDIR /src
ENV CARGO_TERM_COLOR=never CARGO_INCREMENTAL=0

# 1. Dependencies only. The stub must create every target file Cargo.toml names explicitly, or cargo
#    refuses the manifest: the library, the binary, [[test]] it (tests/it/main.rs) and the [[bench]]
#    targets links and field_cipher (benches/*.rs). Examples are auto-discovered, so none is needed.
#    Keep this list in sync with Cargo.toml.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches tests/it \
 && echo 'fn main() {}' > src/main.rs \
 && : > src/lib.rs \
 && : > tests/it/main.rs \
 && echo 'fn main() {}' > benches/links.rs \
 && echo 'fn main() {}' > benches/field_cipher.rs \
 && cargo build --release --locked --bin media-api \
 && rm -rf src

# 2. The service itself (build.rs sets its link options: packed relocations, glibc >= 2.36, which
#    both images have). Only what the binary is built from is copied (the stub test and bench
#    files stay: they only have to exist), so changes to tests/, benches/ or examples/ do not
#    invalidate this layer. migrations/ is embedded by sqlx::migrate! at compile time.
COPY build.rs ./
COPY src ./src
COPY migrations ./migrations
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin media-api \
 && mkdir -p /out/rootfs/data \
 && cp target/release/media-api /out/media-api

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="media-api" \
      org.opencontainers.image.description="Media upload and data-protection service" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/media-api /usr/local/bin/media-api
# /data is only used by the embedded (dev) SQLite/filesystem mode: mount a volume there. It is owned
# by the runtime user so a fresh named volume inherits a writable owner. Production (Postgres + S3,
# explicit keys) writes nothing to disk.
COPY --from=build --chown=65532:65532 /out/rootfs/ /
WORKDIR /data
ENV MEDIA_API_PORT=8285 \
    MEDIA_DATA_DIR=/data \
    MEDIA_KEYS_DIR=/data/keys \
    MEDIA_LOG_FORMAT=json
# 8285: the API (and /metrics unless MEDIA_METRICS_ADDR moves it); 9090: the conventional
# MEDIA_METRICS_ADDR port (only listened on when that variable is set).
EXPOSE 8285 9090
USER 65532:65532
# Probes http://127.0.0.1:$MEDIA_API_PORT/healthz (no shell or curl needed). With MEDIA_TLS_* set,
# override it in the orchestrator (docker run --health-cmd / compose healthcheck) with
# `media-api healthcheck --url https://…` or use the orchestrator's own probes.
HEALTHCHECK --interval=15s --timeout=4s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/media-api", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/media-api"]
CMD ["serve"]
