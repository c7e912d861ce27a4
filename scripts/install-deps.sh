#!/usr/bin/env bash
# Installs the Debian packages llama-pool needs, and nothing when all are present (so it
# is silent on a ready machine and `make -s llama-server-path` prints only a path).
#
#   install-deps.sh          what building and running need (make build, make run)
#   install-deps.sh --test   plus what the tests, benchmarks and format check use
#   install-deps.sh --extra  plus the optional tools (fuzzers, profilers)
#   install-deps.sh --docker plus the test level, a Docker engine and debootstrap (make
#                            docker-test, which CI runs)
#   --list after the level prints the packages of that level and installs nothing.
set -euo pipefail

# Commands count as present when they are on PATH, whoever installed them (a nodesource
# npm or a pyenv python3 is as good as Debian's); libraries are asked of dpkg.
commands=(g++:g++ make:make cmake:cmake pkg-config:pkg-config git:git curl:curl python3:python3 npm:npm)
# Building: compiler and libraries (catch2 too: the default build compiles the tests).
# Running: git, curl, npm and python3 fetch and build llama-server and the demo model.
packages=(
  libcpp-httplib-dev nlohmann-json3-dev libboost-dev libboost-filesystem-dev libfmt-dev catch2
  libssl-dev zlib1g-dev libbrotli-dev
  prometheus-cpp-dev  # the pool's own metric families and their text serializer
)
level="${1:-}"
# What the tests run beside the pool: `make test`, `make bench` and `make check-format`.
if [ "$level" = "--test" ] || [ "$level" = "--extra" ] || [ "$level" = "--docker" ]; then
  packages+=(
    prometheus  # promtool checks /metrics and the alert rules in the tests
    wrk nginx haproxy  # the benchmark harness, smoke-run by the tests
    docker-compose systemd yamllint  # deployment checks (compose, systemd-analyze, manifests)
    clang-format  # make check-format, the first step of CI
    chromium  # the console's browser test (test/console), headless
  )
fi
# Tools the optional targets use; installed by `make deps-extra`: clang for the fuzzers,
# valgrind and perf for scripts/bench/profile.py.
if [ "$level" = "--extra" ]; then
  packages+=(clang libclang-rt-14-dev valgrind linux-perf)
fi

# `make docker-test`: Debian's engine (dockerd is started by hand, there is no systemd; its
# client is /usr/bin/docker) and debootstrap, which makes the debian:12 base images when no
# registry can give them (scripts/docker-engine.sh).
if [ "$level" = "--docker" ]; then
  packages+=(docker.io debootstrap)
fi

if [ "${2:-${1:-}}" = "--list" ]; then
  printf '%s\n' "${packages[@]}" "${commands[@]##*:}"
  exit 0
fi

# The console's browser test drives chromium with puppeteer-core from the npm registry, at
# the version test/console/package-lock.json pins; installed once, again when the pin moves.
console_test_modules() {
  [ "$level" = "--test" ] || [ "$level" = "--extra" ] || return 0
  local dir pinned
  dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/test/console"
  pinned=$(sed -n 's/.*"puppeteer-core": "\(.*\)".*/\1/p' "$dir/package.json")
  grep -qs "\"version\": \"$pinned\"" "$dir/node_modules/puppeteer-core/package.json" && return 0
  echo "install-deps: npm ci in test/console (puppeteer-core $pinned)" >&2
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
}

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
for c in "${commands[@]}"; do
  command -v "${c%%:*}" >/dev/null || missing+=("${c##*:}")
done
if [ "${#missing[@]}" -eq 0 ]; then
  console_test_modules
  exit 0
fi

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "install-deps: installing ${missing[*]}" >&2
# Another apt (a helper, unattended-upgrades) may hold the lock for a while: wait for it
# rather than fail.
$sudo apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >&2
console_test_modules
