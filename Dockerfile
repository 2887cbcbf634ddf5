# syntax=docker/dockerfile:1
# Images of Weir, one target each, all from one build stage:
#   docker build --target operator -t ghcr.io/weir-mesh/weir-operator:0.1.0 .
#   docker build --target webhook  -t ghcr.io/weir-mesh/weir-webhook:0.1.0 .
#   docker build --target init     -t ghcr.io/weir-mesh/weir-init:0.1.0 .
# The binaries are linked statically (glibc, crt-static: a static-pie; checked with this
# very build command outside Docker) and stripped (~20 MB for the operator), so the
# operator and webhook images are distroless/static: no shell, no package manager,
# non-root. They resolve no host names (the API server is reached by IP in a pod), so
# glibc's NSS, absent from a static binary, is not needed.

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# crt-static applies to the target only with an explicit --target (build scripts and proc
# macros stay dynamic, as they must).
ENV RUSTFLAGS="-C target-feature=+crt-static" \
    CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=true
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(uname -m)-unknown-linux-gnu" \
    && cargo build --release --locked --target "$target" \
         -p weir-operator --bin weir-operator -p weir-webhook --bin weir-webhook --bin weir-init \
    && mkdir -p /out \
    && cp "target/$target/release/weir-operator" "target/$target/release/weir-webhook" \
          "target/$target/release/weir-init" /out/

FROM gcr.io/distroless/static-debian12:nonroot AS operator
COPY --from=build /out/weir-operator /usr/local/bin/weir-operator
USER 65532:65532
EXPOSE 15010 15090
ENTRYPOINT ["/usr/local/bin/weir-operator"]
CMD ["run"]

FROM gcr.io/distroless/static-debian12:nonroot AS webhook
COPY --from=build /out/weir-webhook /usr/local/bin/weir-webhook
USER 65532:65532
EXPOSE 9443
ENTRYPOINT ["/usr/local/bin/weir-webhook"]
CMD ["serve"]

# weir-init programs iptables in the pod's network namespace: it needs the iptables tools.
FROM docker.io/library/debian:bookworm-slim AS init
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/weir-init /usr/local/bin/weir-init
ENTRYPOINT ["/usr/local/bin/weir-init"]
