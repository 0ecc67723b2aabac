#!/usr/bin/env bash
# Make a local stand-in for `python:3.11-slim-bookworm` from Debian packages, for hosts that can
# reach a Debian mirror but no image registry (the images' FROM line then finds it locally).
#
#   sudo Dockerfiles/python-base.sh [--engine docker|podman] [--mirror URL]
#
# Debian bookworm's minimal root file system (debootstrap, about 25 s) is imported as
# `debian:bookworm`; python-base.Dockerfile adds Python 3.11 as a virtual environment in /usr/local
# (python and pip on PATH, as in the official image) and is tagged `python:3.11-slim-bookworm`.
# The mirror defaults to the one apt uses on this host. Needs root and the debootstrap package.
# Does nothing when an image of that name is already present.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
TAG=python:3.11-slim-bookworm
ENGINE=""
MIRROR=""

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --engine) ENGINE="$2"; shift 2 ;;
    --mirror) MIRROR="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "python-base.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

# shellcheck source=Dockerfiles/engine.sh
. "$HERE/engine.sh"
ENGINE="$(pick_engine "$ENGINE")"
BUILD_FLAGS=()
[ "$ENGINE" = podman ] && BUILD_FLAGS=(--format docker --network host)

if "$ENGINE" image inspect "$TAG" >/dev/null 2>&1; then
  echo "$TAG is already present"
  exit 0
fi

# The first bookworm mirror in apt's sources: deb822 files (URIs:/Suites:) or one-line `deb` entries.
apt_mirror() {
  local file
  for file in /etc/apt/sources.list.d/*.sources; do
    [ -f "$file" ] || continue
    awk '/^URIs:/ {uri=$2} /^Suites:/ && / bookworm( |$)/ && uri {print uri; exit}' "$file"
  done
  for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$file" ] || continue
    awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' "$file"
  done
}
if [ -z "$MIRROR" ]; then
  MIRROR="$(apt_mirror | head -n 1)"
fi
if [ -z "$MIRROR" ]; then
  echo "python-base.sh: no bookworm mirror in apt's sources; pass --mirror URL" >&2
  exit 1
fi

ROOTFS="$(mktemp -d /tmp/debian-bookworm.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT
echo "debootstrap bookworm from $MIRROR"
debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >/dev/null
# debootstrap leaves the downloaded packages and indexes behind (about 120 MB the image never needs)
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
tar -C "$ROOTFS" -c . | "$ENGINE" import - debian:bookworm
"$ENGINE" build "${BUILD_FLAGS[@]}" -f "$HERE/python-base.Dockerfile" -t "$TAG" "$HERE"
