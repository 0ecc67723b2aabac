# What `python:3.11-slim-bookworm` gives the images (Python 3.11 with python and pip on PATH, on
# Debian bookworm), built on a local `debian:bookworm`: Dockerfiles/python-base.sh makes both
# where no image registry can be reached.
FROM debian:bookworm

# DL3008: the packages come from bookworm itself; pinning a Debian revision would break the build
# at the next point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /usr/local
