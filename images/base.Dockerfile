# Base for the node images where a registry was reachable once (debian:<suite>-slim present)
# and the engine's containers have network. build.py falls back to debootstrap otherwise; both
# give the same packages. SUITE and PACKAGES are passed by build.py (its base_packages(suite)).
ARG SUITE=trixie
FROM debian:${SUITE}-slim
ARG PACKAGES
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${PACKAGES} \
    && rm -rf /var/lib/apt/lists/*
