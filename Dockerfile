# The `sentinel` image: one binary that runs as `sentinel node`, `sentinel router` or any
# query command, e.g. `docker run IMAGE cluster status --endpoint http://router:7500`.
#
#   docker build -t sentinel:0.1.0 .
#
# The builder uses the project's toolchain with the packages scripts/setup installs for a
# build; the runtime stage is distroless: glibc, libstdc++ (RocksDB), OpenSSL (the
# RabbitMQ, webhook and InfluxDB clients) and CA certificates, no shell and no package
# manager, running as the unprivileged user 65532, which the Kubernetes manifests expect.

FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
       libclang-dev protobuf-compiler libprotobuf-dev libssl-dev zlib1g-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin sentinel \
    && install -D target/release/sentinel /out/sentinel

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/sentinel /usr/local/bin/sentinel
USER 65532:65532
# gRPC (node 7400, router 7500), HTTP (node 9400: metrics and health; router 8080: REST).
EXPOSE 7400 7500 8080 9400
ENTRYPOINT ["/usr/local/bin/sentinel"]
CMD ["--help"]
