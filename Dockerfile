# syntax=docker/dockerfile:1
# The keyless controller image. CI does not build it (no container engine runs there); .ci/chart.sh only
# checks that the USER below is the UID the Helm chart runs as.
#
#   docker build -t myregistry.azurecr.io/keyless:0.1.0 .

# Build stage: the Rust toolchain on Debian 12, the same glibc as the runtime image.
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target directory between builds; the binary is copied out of the
# cached target directory because cache mounts are not part of the image.
# --no-default-features: no Azure emulator in the image (the keyless-emulator crate: a TLS server that
# mints Entra tokens, which an operator running with a real Azure identity never needs). In this
# binary `keyless emulator`, `keyless bench` and `--emulator` only say how to get a build with them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --no-default-features --package keyless --bin keyless \
    && install -D -m 0755 target/release/keyless /out/keyless

# Runtime: distroless "cc" (glibc, libgcc, CA certificates, /etc/passwd with nonroot = 65532), no shell,
# no package manager. The CA bundle is what ARM, Graph and Entra TLS is verified against.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/keyless /usr/local/bin/keyless
# Numeric, so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/keyless"]
CMD ["run"]
