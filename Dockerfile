# p11trace: shim, recorder and query tool, with SoftHSM2 and OpenSC to try them.
# Build: docker build -t p11trace .
# Run:   docker run --rm -it p11trace p11trace-recorder --dataset /data   (binaries in /usr/local)
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p p11trace-shim -p p11trace-recorder -p p11trace-query \
 && strip --strip-debug target/release/libp11trace_shim.so target/release/p11trace-recorder \
      target/release/p11trace-query

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends softhsm2 opensc gnutls-bin ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/p11trace-recorder /src/target/release/p11trace-query /usr/local/bin/
COPY --from=build /src/target/release/libp11trace_shim.so /usr/local/lib/libp11trace_shim.so
COPY schemas/*.md schemas/*.json /usr/local/share/doc/p11trace/
ENV P11TRACE_MODULE=/usr/lib/softhsm/libsofthsm2.so
CMD ["p11trace-recorder", "--help"]
