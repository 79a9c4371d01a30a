# Base for the node images where a registry was reachable once (debian:bookworm-slim present)
# and the engine's containers have network. build.py falls back to debootstrap otherwise; both
# give the same packages. PACKAGES is passed by build.py (its BASE_PACKAGES list).
FROM debian:bookworm-slim
ARG PACKAGES
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${PACKAGES} \
    && rm -rf /var/lib/apt/lists/*
