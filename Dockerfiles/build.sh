#!/usr/bin/env bash
# Build the clip_server images with whichever container engine is present.
#
#   Dockerfiles/build.sh [options] RUNTIME...     RUNTIME: torch, onnx or tensorrt
#
#   --engine docker|podman   default: docker when its daemon answers, else podman
#   --tag-prefix NAME        images are tagged NAME:RUNTIME (default clip-server)
#   --user-id ID, --group-id ID
#                            the ids of the image's user `cas` (default: yours, `id -u`/`id -g`,
#                            so a mounted ~/.cache keeps its ownership)
#   --build-arg KEY=VALUE    passed on (ONNXRUNTIME, PIP_VERSION; see docs/docker.md)
#   --host-pip-config        podman only: mount this host's CA bundle and /etc/pip.conf read-only
#                            into the build, for networks behind a TLS-intercepting proxy or a
#                            private package index. Nothing of them stays in the image.
#
# Runs from any folder; the build context is the repository root. Prints, per image, the build
# time and the image size. With podman it builds with `--format docker` (podman's default OCI
# format ignores the Dockerfiles' SHELL line, and with it `pipefail`) and `--network host`.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$HERE")"
ENGINE=""
PREFIX=clip-server
USER_ID="$(id -u)"
GROUP_ID="$(id -g)"
HOST_PIP_CONFIG=0
EXTRA=()
RUNTIMES=()

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --engine) ENGINE="$2"; shift 2 ;;
    --tag-prefix) PREFIX="$2"; shift 2 ;;
    --user-id) USER_ID="$2"; shift 2 ;;
    --group-id) GROUP_ID="$2"; shift 2 ;;
    --build-arg) EXTRA+=(--build-arg "$2"); shift 2 ;;
    --host-pip-config) HOST_PIP_CONFIG=1; shift ;;
    -h|--help) usage; exit 0 ;;
    torch|onnx|tensorrt) RUNTIMES+=("$1"); shift ;;
    *) echo "build.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [ ${#RUNTIMES[@]} -eq 0 ]; then
  usage >&2
  exit 2
fi

# shellcheck source=Dockerfiles/engine.sh
. "$HERE/engine.sh"
ENGINE="$(pick_engine "$ENGINE")"

FLAGS=(--build-arg "USER_ID=$USER_ID" --build-arg "GROUP_ID=$GROUP_ID" "${EXTRA[@]}")
if [ "$ENGINE" = podman ]; then
  FLAGS+=(--format docker --network host)
fi
if [ "$HOST_PIP_CONFIG" = 1 ]; then
  if [ "$ENGINE" != podman ]; then
    echo "build.sh: --host-pip-config needs podman (docker build cannot mount host files)" >&2
    exit 2
  fi
  for file in /etc/ssl/certs/ca-certificates.crt /etc/pip.conf; do
    if [ -f "$file" ]; then
      FLAGS+=(-v "$file:$file:ro")
    fi
  done
fi

for runtime in "${RUNTIMES[@]}"; do
  dockerfile="$HERE/$runtime.Dockerfile"
  tag="$PREFIX:$runtime"
  ignore=()
  # docker's BuildKit reads <Dockerfile>.dockerignore by itself; podman is told
  [ "$ENGINE" = podman ] && ignore=(--ignorefile "$dockerfile.dockerignore")
  start=$(date +%s)
  "$ENGINE" build "${FLAGS[@]}" "${ignore[@]}" -f "$dockerfile" -t "$tag" "$REPO"
  seconds=$(($(date +%s) - start))
  bytes="$("$ENGINE" image inspect --format '{{.Size}}' "$tag")"
  echo "built $tag in ${seconds}s, $((bytes / 1000000)) MB"
done
