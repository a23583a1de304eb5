# codex-proxy image: a release build on Debian, run as an unprivileged user.
# The built-in demo worker answers unless `worker.command` (or CODEX_BIN) names a Codex
# app-server installed in a derived image.
#
# The Rust image is pinned to Cargo.toml's `rust-version` (the oldest toolchain the locked
# dependency tree builds with); scripts/check-artifacts.sh holds the two equal.
FROM rust:1.88-bookworm AS build
WORKDIR /src
# Dependencies first, in a layer of their own: it is rebuilt only when Cargo.toml,
# Cargo.lock, the build script or the protocol files change, not on every source edit.
# Stub targets stand in for the sources; the build script runs, so that its own
# dependencies (prost-build, protox) are cached too.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/metrics.rs \
 && cargo build --release --locked --bin codex-proxy \
 && rm -rf src benches target/release/codex-proxy* target/release/deps/codex_proxy-* \
      target/release/deps/libcodex_proxy-* target/release/.fingerprint/codex-proxy-* \
      target/release/build/codex-proxy-*
COPY . .
RUN cargo build --release --locked --bin codex-proxy

FROM debian:bookworm-slim
# ca-certificates: remote-write and Pushgateway over HTTPS trust the system's roots.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home-dir /var/lib/codex-proxy --create-home codex-proxy
COPY --from=build /src/target/release/codex-proxy /usr/local/bin/codex-proxy
COPY deploy/image.toml /etc/codex-proxy/codex-proxy.toml
# Read by `serve` and by `healthcheck` alike (the global --config's variable).
ENV CODEX_PROXY_CONFIG=/etc/codex-proxy/codex-proxy.toml
USER codex-proxy
WORKDIR /var/lib/codex-proxy
EXPOSE 11435
# No curl in the image: the binary asks its own /readyz (exit 0 on 200).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["codex-proxy", "healthcheck", "--timeout", "3s"]
ENTRYPOINT ["codex-proxy"]
CMD ["serve"]
