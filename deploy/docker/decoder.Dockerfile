# syntax=docker/dockerfile:1.7
# osa-decoder: VAE decoder, H.264 and MP4 / fragmented MP4; links libtorch (tch 0.24 = torch
# 2.11.0), so the runtime image carries libtorch's shared libraries and
# nothing else of Python.
#
#   GPU (default: PyPI's torch wheel, CUDA libraries as nvidia-* wheels):
#     docker build -f deploy/docker/decoder.Dockerfile -t osa/osa-decoder:0.1.0-cuda .
#   CPU only (the dev overlay): point TORCH_INDEX_URL at PyTorch's CPU wheel
#   index:
#     docker build -f deploy/docker/decoder.Dockerfile \
#       --build-arg TORCH_INDEX_URL=<pytorch cpu index> -t osa/osa-decoder:dev-cpu .
#
# (build context: the repository root; decoder.Dockerfile.dockerignore keeps
# target/ and .venv/ out of it.) The GPU driver comes from the node (NVIDIA
# container toolkit), never from the image.

ARG RUST_VERSION=1.88
ARG TORCH_VERSION=2.11.0
ARG TORCH_INDEX_URL=
ARG TORCH_HOME=/opt/torch/lib/python3.11/site-packages

# libtorch as the torch wheel ships it (headers for the build, libraries for
# both). Its libraries find the nvidia-* ones by relative RUNPATH, so the
# site-packages layout is kept as is.
FROM python:3.11-slim-bookworm AS torch
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
ARG TORCH_HOME
RUN python -m venv /opt/torch \
 && /opt/torch/bin/pip install --no-cache-dir ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}" \
 && mkdir -p "$TORCH_HOME/nvidia"

FROM rust:${RUST_VERSION}-bookworm AS build
ARG TORCH_HOME
# nasm: openh264 is compiled from source (osa-media).
RUN apt-get update \
 && apt-get install -y --no-install-recommends nasm pkg-config \
 && rm -rf /var/lib/apt/lists/*
COPY --from=torch /opt/torch /opt/torch
ENV LIBTORCH=${TORCH_HOME}/torch \
    LIBTORCH_BYPASS_VERSION_CHECK=0 \
    RUSTFLAGS="-C link-arg=-Wl,-rpath,${TORCH_HOME}/torch/lib"
WORKDIR /src
COPY . .
# With the CUDA build, keep libtorch_cuda as a needed library: the default
# --as-needed link drops it (no symbol of it is referenced directly), and then
# libtorch never registers its CUDA backend. `cargo rustc` puts the flag on
# the final link only. (Once the services have a `cuda` cargo feature doing
# this, build with --features cuda instead.)
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eu; extra=""; \
    if [ -e "$LIBTORCH/lib/libtorch_cuda.so" ]; then \
      extra="-C link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed"; \
    fi; \
    cargo rustc --release --locked -p osa-decoder --bin osa-decoder -- $extra \
 && install -D target/release/osa-decoder /out/osa-decoder

FROM debian:bookworm-slim AS runtime
ARG TORCH_HOME
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 osa \
 && useradd --system --uid 10001 --gid osa --no-create-home --shell /usr/sbin/nologin osa
# Only the shared libraries: torch/lib and the CUDA runtime wheels (empty for
# the CPU build). No Python, no headers.
COPY --from=torch ${TORCH_HOME}/torch/lib ${TORCH_HOME}/torch/lib
COPY --from=torch ${TORCH_HOME}/nvidia ${TORCH_HOME}/nvidia
COPY --from=build /out/osa-decoder /usr/local/bin/osa-decoder
USER 10001:10001
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    OSA__GRPC__LISTEN=0.0.0.0:50054 \
    OSA__METRICS__LISTEN=0.0.0.0:9094 \
    OSA__TELEMETRY__LOG_FORMAT=json
EXPOSE 50054 9094
ENTRYPOINT ["/usr/local/bin/osa-decoder"]
