#!/usr/bin/env bash
# Installs the Debian packages llama-pool needs, and nothing when all are present (so it
# is silent on a ready machine and `make -s llama-server-path` prints only a path).
set -euo pipefail

# Commands count as present when they are on PATH, whoever installed them (a nodesource
# npm or a pyenv python3 is as good as Debian's); libraries are asked of dpkg.
commands=(g++:g++ make:make cmake:cmake pkg-config:pkg-config git:git curl:curl python3:python3 npm:npm)
packages=(
  libcpp-httplib-dev nlohmann-json3-dev libboost-dev libboost-filesystem-dev libfmt-dev catch2
  libssl-dev zlib1g-dev libbrotli-dev
  prometheus  # promtool checks /metrics and the alert rules in the tests
  wrk nginx haproxy  # the benchmark harness, smoke-run by the tests
  docker-compose systemd yamllint  # deployment checks (compose, systemd-analyze, manifests)
  clang-format  # make check-format, the first step of CI
)
# Tools the optional targets use; installed by `make deps-extra`: clang for the fuzzers,
# valgrind and perf for scripts/bench/profile.py.
if [ "${1:-}" = "--extra" ]; then
  packages+=(clang libclang-rt-14-dev valgrind linux-perf)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
for c in "${commands[@]}"; do
  command -v "${c%%:*}" >/dev/null || missing+=("${c##*:}")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "install-deps: installing ${missing[*]}" >&2
$sudo apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
