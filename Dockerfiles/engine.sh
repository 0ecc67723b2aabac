# Sourced by build.sh and python-base.sh: which container engine to use.
#
# pick_engine [NAME]: NAME if given; else docker when its daemon answers, else podman when
# installed. A docker client without a running daemon cannot build, so it does not count.
pick_engine() {
  if [ -n "${1:-}" ]; then
    echo "$1"
  elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    echo docker
  elif command -v podman >/dev/null 2>&1; then
    echo podman
  else
    echo "no container engine: install docker (with its daemon running) or podman" >&2
    return 1
  fi
}
