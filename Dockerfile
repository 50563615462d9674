# syntax=docker/dockerfile:1
# The reflex image: one static-enough binary on an empty base (`FROM scratch`) with only the
# shared libraries it links (glibc, OpenSSL, zlib, libgcc), CA certificates, a non-root user, and
# the repository's config/, schemas/, policies/ and analytics/ as defaults under /etc/reflex (mount your own
# over them, or point REFLEX_CONFIG elsewhere).
#
# Two ways to build it:
#   make image          builds the binary on this machine (cargo build --release), lays out the
#                       root filesystem with scripts/image.sh rootfs, and builds this file with
#                       buildah (no Docker daemon, no base image to pull): ROOTFS_FROM=prebuilt.
#   docker build .      (or buildah bud) where a registry is reachable: the `cargo` stage compiles
#                       in the official Rust image and lays out the same root filesystem.
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG ROOTFS_FROM=cargo

# Stage 1a: compile in a Rust image and lay out the root filesystem.
FROM ${RUST_IMAGE} AS cargo
RUN apt-get update && apt-get install -y --no-install-recommends cmake libssl-dev binutils \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin reflex \
    && scripts/image.sh rootfs target/release/reflex /rootfs

# Stage 1b: the root filesystem `make image` laid out on the host.
FROM scratch AS prebuilt
LABEL org.reflex.image=build-stage
COPY target/image/rootfs/ /rootfs/

# Stage 2: the runtime image, from nothing but that root filesystem.
FROM ${ROOTFS_FROM} AS rootfs
FROM scratch
LABEL org.opencontainers.image.title=reflex \
      org.opencontainers.image.description="Policy-governed, audited actions and a Parquet lake from CloudEvents on Kafka" \
      org.opencontainers.image.licenses=Apache-2.0 \
      org.reflex.image=runtime
COPY --from=rootfs /rootfs/ /
ENV REFLEX_CONFIG=/etc/reflex/config/reflex.toml \
    REFLEX_LOG=info \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# The lake's local default and anything else a worker writes lives under /var/lib/reflex.
WORKDIR /var/lib/reflex
USER 10001:10001
# The telemetry listener (/metrics, /healthz, /readyz) when [telemetry] listen is set.
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/reflex"]
CMD ["run", "--role", "actions"]
