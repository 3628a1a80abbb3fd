# syntax=docker/dockerfile:1.7
# osa-gateway: the public API. Holds no model and links no libtorch, so the
# runtime image is Debian slim plus the one binary.
#
#   docker build -f deploy/docker/gateway.Dockerfile -t osa/osa-gateway:dev .
#
# (build context: the repository root; gateway.Dockerfile.dockerignore keeps
# target/ and .venv/ out of it.)

ARG RUST_VERSION=1.88

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p osa-gateway --bin osa-gateway \
 && install -D target/release/osa-gateway /out/osa-gateway

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 osa \
 && useradd --system --uid 10001 --gid osa --no-create-home --shell /usr/sbin/nologin osa
COPY --from=build /out/osa-gateway /usr/local/bin/osa-gateway
USER 10001:10001
# The defaults listen on loopback; in a container every interface.
ENV OSA__GRPC__LISTEN=0.0.0.0:50051 \
    OSA__METRICS__LISTEN=0.0.0.0:9091 \
    OSA__TELEMETRY__LOG_FORMAT=json
EXPOSE 50051 9091
ENTRYPOINT ["/usr/local/bin/osa-gateway"]
