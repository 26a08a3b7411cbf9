# A local stand-in for python:3.11-slim-bookworm, on a debootstrapped Debian (no registry pull).
# Used only by .ci/images.sh; users build the real Dockerfile with the official image.
ARG DEBIAN_IMAGE=local/debian:bookworm-minbase
FROM ${DEBIAN_IMAGE}
# This machine's CA bundle (apt and pip go through its TLS-intercepting proxy).
COPY ca-certificates.crt /etc/ssl/certs/kubetasks-build-ca.crt
ENV PIP_CERT=/etc/ssl/certs/kubetasks-build-ca.crt
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb
