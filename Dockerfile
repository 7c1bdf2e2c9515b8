# syntax=docker/dockerfile:1
# The eds image: one binary, `eds`, on a distroless base with no shell and no
# package manager, running as the distroless "nonroot" user (65532).
#
#   docker build -t registry.example.com/platform/eds:0.1.0 .
#
# This project publishes no image: docs/install.md ("The eds image") says how
# to build, push and name yours in the chart.
#
# The build stage needs the network (crates.io); the image needs none at run
# time beyond the NATS servers and, for the controller, the API server.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# protoc comes from the protoc-bin-vendored crate, so no system package is needed.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin eds \
    && install -D -m 0755 target/release/eds /out/eds

# glibc-based distroless: eds links glibc and libgcc_s dynamically (ring, tokio).
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="eds" \
      org.opencontainers.image.description="EventDrivenService controller and KEDA external scaler for NATS JetStream" \
      org.opencontainers.image.source="https://github.com/bizmatters/eds" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/eds /usr/local/bin/eds
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/eds"]
