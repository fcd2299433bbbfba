# Koine container image: a static-ish release build on Debian slim.
FROM rust:1.94-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin koine

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/koine /usr/local/bin/koine
EXPOSE 2379
ENTRYPOINT ["/usr/local/bin/koine"]
CMD ["--listen-address", "0.0.0.0:2379"]
