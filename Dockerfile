# syntax=docker/dockerfile:1
# media-api: multi-stage build. The dependency layer is cached separately from the sources, the
# runtime image is distroless (no shell, no package manager), runs as a non-root user and works with
# a read-only root filesystem (mount a volume at /data only for the embedded SQLite/filesystem mode).

FROM rust:1.95-bookworm AS build
WORKDIR /src
# 1. Dependencies only: build a stub crate with the real manifest so this layer is reused until
#    Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches examples tests/it \
 && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
 && echo "fn main() {}" > examples/upload_rss.rs && echo "" > tests/it/main.rs && echo "fn main() {}" > benches/links.rs && echo "fn main() {}" > benches/field_cipher.rs \
 && cargo build --release --locked --bin media-api \
 && rm -rf src examples tests benches
# 2. The service itself.
COPY src ./src
COPY migrations ./migrations
COPY examples ./examples
COPY tests ./tests
COPY benches ./benches
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin media-api

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/media-api /usr/local/bin/media-api
WORKDIR /data
ENV MEDIA_API_PORT=8285 \
    MEDIA_DATA_DIR=/data \
    MEDIA_KEYS_DIR=/data/keys \
    MEDIA_LOG_FORMAT=json
EXPOSE 8285
USER nonroot:nonroot
HEALTHCHECK --interval=15s --timeout=4s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/media-api", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/media-api"]
CMD ["serve"]
