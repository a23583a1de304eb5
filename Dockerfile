# codex-proxy image: a release build on Debian, run as an unprivileged user.
# The built-in demo worker answers unless `worker.command` (or CODEX_BIN) names a Codex
# app-server installed in a derived image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin codex-proxy

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home-dir /var/lib/codex-proxy --create-home codex-proxy
COPY --from=build /src/target/release/codex-proxy /usr/local/bin/codex-proxy
USER codex-proxy
WORKDIR /var/lib/codex-proxy
EXPOSE 11435
ENTRYPOINT ["codex-proxy"]
CMD ["serve", "--config", "/etc/codex-proxy/codex-proxy.toml"]
