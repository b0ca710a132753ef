# p11trace: shim, recorder and query tool, with SoftHSM2, OpenSC and OpenSSL to try them.
#   just docker-demo                     (builds the image, runs the demo, report in target/docker-demo/)
#   docker build -t p11trace .
#   docker run --rm p11trace p11trace-demo
#   docker run --rm -it -v "$PWD/data:/data" p11trace p11trace-recorder --dataset /data
# The build stage is a cold release build of the workspace's three artefacts (polars is most of
# it: about 16 minutes on 2 cores, BENCHMARKS.md §9); the runtime stage is Debian slim plus the token, the
# clients and the artefacts, nothing of the toolchain (README, "In a container").

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p p11trace-shim -p p11trace-recorder -p p11trace-query \
 && strip --strip-debug target/release/libp11trace_shim.so target/release/p11trace-recorder \
      target/release/p11trace-query

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      softhsm2 opensc gnutls-bin openssl jq ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/p11trace-recorder /src/target/release/p11trace-query /usr/local/bin/
COPY --from=build /src/target/release/libp11trace_shim.so /usr/local/lib/libp11trace_shim.so
COPY schemas/*.md schemas/*.json /usr/local/share/doc/p11trace/
COPY scripts/demo.sh /usr/local/share/p11trace/demo.sh
RUN printf '#!/bin/sh\nexec /usr/local/share/p11trace/demo.sh /usr/local/bin /usr/local/lib/libp11trace_shim.so "$@"\n' \
      > /usr/local/bin/p11trace-demo \
 && chmod 755 /usr/local/bin/p11trace-demo /usr/local/share/p11trace/demo.sh
ENV P11TRACE_MODULE=/usr/lib/softhsm/libsofthsm2.so
CMD ["p11trace-recorder", "--help"]
