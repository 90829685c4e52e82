# Image for the `docker` sandbox backend: only what submissions run with (the harness itself
# is passed on the command line and needs nothing but the standard library).
#   docker build -f deploy/sandbox.Dockerfile -t reward-service-sandbox .
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 g++ libc6-dev \
 && rm -rf /var/lib/apt/lists/*
