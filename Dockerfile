# syntax=docker/dockerfile:1
# The one `wavelink` binary in a minimal image, as a non-root user.
#
#   docker build -t wavelink .
#
# Stage 1 builds the dependencies alone (from the manifests and Cargo.lock, with empty crate
# sources), so that layer is reused until a dependency changes; stage 2 builds the sources the
# same way `make build` does (`cargo build --release --locked`).
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
# Pingora's zlib-ng build needs cmake, containerd's gRPC API protoc (scripts/deps.sh installs
# both on a fresh machine).
RUN apt-get update && apt-get install -y --no-install-recommends cmake protobuf-compiler && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY core/Cargo.toml core/
COPY server/Cargo.toml server/
COPY proxy/Cargo.toml proxy/
COPY wavelet/Cargo.toml wavelet/
COPY controller/Cargo.toml controller/
COPY loadtest/Cargo.toml loadtest/
COPY kubernetes/Cargo.toml kubernetes/
RUN for crate in core server proxy wavelet controller loadtest kubernetes; do \
      mkdir -p $crate/src && touch $crate/src/lib.rs; \
    done \
 && mkdir -p src && echo 'fn main() {}' > src/main.rs && echo 'fn main() {}' > src/wavelink_fn.rs \
 && cargo build --release --locked \
 && rm -rf src */src target/release/.fingerprint/wavelink*
COPY . .
RUN cargo build --release --locked --bin wavelink

FROM debian:bookworm-slim
# nftables: the Wavelet's rules for Emergency Instances' egress (--egress=nat), applied once at start.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates nftables && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/wavelink /usr/local/bin/wavelink
# A fixed, unprivileged user (the manifests run every container as 65532).
USER 65532:65532
EXPOSE 8080 8091 9090 9091 9092
ENTRYPOINT ["/usr/local/bin/wavelink"]
CMD ["--help"]
