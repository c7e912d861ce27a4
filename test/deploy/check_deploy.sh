#!/usr/bin/env bash
# Deployment files, checked without a Docker engine (make docker-test runs the image):
#   docker-compose config validates the compose files, which need MODELS_DIR, give up on a
#   config error, set no CPU limit a small host cannot give, and drain within their stop time;
#   the Dockerfile's COPY sources exist, llama.cpp is built before the sources are copied,
#   its runtime stage installs every shared library the two binaries need and no other, it
#   runs as a numeric non-root uid, drains within `docker stop`'s 10 s and health-checks
#   /health; the toolchain shows npm's errors;
#   systemd-analyze verifies the unit.
# Usage: check_deploy.sh BUILD/llama-pool LLAMA_SERVER_BINARY
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
pool=$1
server=$2
passed=0
failed=0
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
check() {  # check NAME COMMAND...
  local name=$1
  shift
  if "$@" >"$scratch/check.out" 2>&1; then
    echo "PASS $name"
    passed=$((passed + 1))
  else
    echo "FAIL $name"
    sed 's/^/    /' "$scratch/check.out"
    failed=$((failed + 1))
  fi
}

dockerfile=$root/docker/Dockerfile
# The Dockerfile with continued lines joined, for checks that read whole instructions.
joined=$(sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$dockerfile")
models_dir=$scratch/models
mkdir "$models_dir"
compose() {  # compose FILE ARGS...: docker-compose with a models folder, as a user runs it
  local file=$1
  shift
  MODELS_DIR=$models_dir docker-compose -f "$root/docker/$file" "$@"
}
check "docker-compose config" compose docker-compose.yml config -q
check "docker-compose config (groups)" compose docker-compose.groups.yml config -q
# Without MODELS_DIR, compose must stop with a message rather than mount an empty folder
# (the pool would then exit 2 on every start).
compose_needs_models_dir() {
  local file out
  for file in docker-compose.yml docker-compose.groups.yml; do
    if out=$(env -u MODELS_DIR docker-compose -f "$root/docker/$file" config -q 2>&1); then
      echo "$file: config passed without MODELS_DIR"
      return 1
    fi
    grep -q 'set MODELS_DIR' <<<"$out" || { echo "$file: $out"; return 1; }
  done
}
check "compose refuses to start without MODELS_DIR" compose_needs_models_dir
# A config error (exit 2) must not restart forever.
# Output is captured before it is searched: `cmd | grep -q` under pipefail fails when grep
# exits at its match and cmd's last write then gets SIGPIPE (docker-compose writes its final
# newline separately, so this failed CI at random).
compose_does_not_restart_forever() {
  local file out
  for file in docker-compose.yml docker-compose.groups.yml; do
    out=$(compose "$file" config) || return 1
    grep -qE '^    restart: on-failure:[0-9]+$' <<<"$out" ||
      { echo "$file: llama-pool's restart policy is not on-failure:N"; return 1; }
  done
}
check "compose gives up on a config error" compose_does_not_restart_forever
# The default must work on a 2-CPU host: no CPU limit (0) unless LLAMA_POOL_CPUS is set.
compose_cpus_fit_small_hosts() {
  local cpus
  cpus=$(env -u LLAMA_POOL_CPUS MODELS_DIR="$models_dir" docker-compose \
    -f "$root/docker/docker-compose.yml" config | awk '$1 == "cpus:" {print $2}')
  echo "cpus limit by default: ${cpus:-none}"
  [ -z "$cpus" ] || awk -v c="$cpus" 'BEGIN {exit !(c + 0 == 0 || c + 0 <= 2)}'
}
check "compose's default CPU limit fits a 2-CPU host" compose_cpus_fit_small_hosts
# The image's drain fits in `docker stop`'s default 10 s; compose's (30 s) in its
# stop_grace_period.
grace_fits_stop_timeouts() {
  local image_grace compose_grace stop_period file
  image_grace=$(grep -E '^ENV ' <<<"$joined" | grep -oE 'LLAMA_POOL_SHUTDOWN_GRACE=[0-9]+' | cut -d= -f2)
  echo "image grace: ${image_grace:-unset}"
  [ -n "$image_grace" ] && [ "$image_grace" -lt 10 ] || return 1
  for file in docker-compose.yml docker-compose.groups.yml; do
    compose_grace=$(compose "$file" config | awk '$1 == "LLAMA_POOL_SHUTDOWN_GRACE:" {gsub(/\x27/, "", $2); print $2}')
    stop_period=$(compose "$file" config | awk '$1 == "stop_grace_period:" {print $2}' | head -n1)
    echo "$file: grace ${compose_grace:-unset}, stop_grace_period ${stop_period:-unset}"
    [ -n "$compose_grace" ] && [ -n "$stop_period" ] || return 1
    [ "${stop_period%s}" -gt "$compose_grace" ] || return 1
  done
}
check "shutdown grace fits docker stop and compose's stop_grace_period" grace_fits_stop_timeouts
# The groups example parses and names only known keys (its model files exist only in a
# user's models folder, so the file checks are not run here).
groups_config_parses() {
  local out
  out=$(LLAMA_SERVER="$server" "$pool" --check-config \
    --config "$root/conf/llama-pool.groups.json" 2>&1)
  ! grep -v 'does not exist or is not a file' <<<"$out" | grep 'error'
}
check "groups example config has only known keys" groups_config_parses

copy_sources_exist() {
  # Every source of every COPY (all words but the last), continued lines joined.
  grep -E '^COPY ' <<<"$joined" | grep -v -- '--from=' | while read -r _ words; do
    read -ra args <<<"$words"
    for src in "${args[@]:0:${#args[@]}-1}"; do
      [ "$src" = "." ] && continue
      [ -e "$root/$src" ] || { echo "COPY source $src does not exist"; exit 1; }
    done
  done
}
check "Dockerfile COPY sources exist" copy_sources_exist
# The slow llama.cpp build must come before `COPY . .`, so a source or doc edit does not
# rebuild it, and the build context must leave out what the image never reads.
llama_build_before_sources() {
  local toolchain copy_all
  toolchain=$(grep -nE 'scripts/llama-toolchain.sh server-path' <<<"$joined" | head -n1 | cut -d: -f1)
  copy_all=$(grep -nE '^COPY \. \.$' <<<"$joined" | head -n1 | cut -d: -f1)
  echo "toolchain build on line ${toolchain:-none}, COPY . . on line ${copy_all:-none}"
  [ -n "$toolchain" ] && [ -n "$copy_all" ] && [ "$toolchain" -lt "$copy_all" ]
}
check "Dockerfile builds llama.cpp before it copies the project sources" llama_build_before_sources
dockerignore_leaves_out_the_noise() {
  local pattern
  for pattern in .git build 'build-*' docs test '**/*.md'; do
    grep -qxF -- "$pattern" "$root/.dockerignore" || { echo ".dockerignore lacks $pattern"; return 1; }
  done
  # ...but keeps what the Dockerfile copies.
  ! grep -qxE 'conf|scripts|common|app' "$root/.dockerignore"
}
check ".dockerignore leaves out what the image does not need" dockerignore_leaves_out_the_noise

runtime_libraries_installed() {
  # The runtime stage is everything after the last FROM.
  local runtime
  runtime=$(awk '/^FROM /{stage=""} {stage=stage"\n"$0} END{print stage}' "$dockerfile")
  local missing=0
  for lib in $(ldd "$pool" "$server" | awk '/=>/{print $3}' | sort -u); do
    pkg=$(dpkg -S "$(readlink -f "$lib")" 2>/dev/null | head -n1 | cut -d: -f1)
    [ -z "$pkg" ] && pkg=$(dpkg -S "$lib" 2>/dev/null | head -n1 | cut -d: -f1)
    case "$pkg" in
      libc6 | libstdc++6 | libgcc-s1 | "") continue ;;  # in debian:12-slim already
    esac
    if ! grep -qw "$pkg" <<<"$runtime"; then
      echo "runtime stage lacks $pkg (for $lib)"
      missing=1
    fi
  done
  return $missing
}
check "Dockerfile runtime stage has every shared library the binaries need" runtime_libraries_installed
# ...and no library package neither binary links (each one is image size and CVEs for nothing).
runtime_libraries_all_needed() {
  local runtime needed pkg extra=0
  runtime=$(awk '/^FROM /{stage=""} {stage=stage"\n"$0} END{print stage}' <<<"$joined")
  needed=$(for lib in $(ldd "$pool" "$server" | awk '/=>/{print $3}' | sort -u); do
    dpkg -S "$(readlink -f "$lib")" 2>/dev/null | head -n1 | cut -d: -f1
    dpkg -S "$lib" 2>/dev/null | head -n1 | cut -d: -f1
  done | sort -u)
  for pkg in $(grep -oE 'apt-get install [^&]*' <<<"$runtime" | tr ' ' '\n' | grep -E '^lib'); do
    grep -qxF "$pkg" <<<"$needed" || { echo "runtime stage installs $pkg, which no binary links"; extra=1; }
  done
  return $extra
}
check "Dockerfile runtime stage installs no library the binaries do not link" runtime_libraries_all_needed
# A number, not a name: Kubernetes' runAsNonRoot can only verify a numeric user.
check "Dockerfile runs as a numeric non-root uid" grep -qE '^USER +[1-9][0-9]*(:[0-9]+)?$' "$dockerfile"
# npm's own error is shown when fetching the llama.cpp source fails (a fake npm fails here).
toolchain_shows_npm_errors() {
  local tmp out
  tmp=$(mktemp -d)
  mkdir "$tmp/bin"
  printf '#!/bin/sh\necho "npm ERR! code SELF_SIGNED_CERT_IN_CHAIN" >&2\nexit 1\n' >"$tmp/bin/npm"
  chmod +x "$tmp/bin/npm"
  out=$(PATH="$tmp/bin:$PATH" LLAMA_POOL_CACHE="$tmp/cache" LLAMA_SERVER='' \
    bash "$root/scripts/llama-toolchain.sh" server-path 2>&1)
  local rc=$?
  rm -rf "$tmp"
  echo "$out"
  [ "$rc" -ne 0 ] && grep -q 'SELF_SIGNED_CERT_IN_CHAIN' <<<"$out"
}
check "llama-toolchain.sh shows npm's error" toolchain_shows_npm_errors
check "Dockerfile takes extra CA certificates for npm" \
  grep -qE '^RUN .*EXTRA_CA_CERTS.*update-ca-certificates' <<<"$joined"
check "Dockerfile's npm trusts the system CA bundle" \
  grep -qE 'NPM_CONFIG_CAFILE=/etc/ssl/certs/ca-certificates.crt .*llama-toolchain.sh' <<<"$joined"
check "Dockerfile health-checks /health" grep -qE '^HEALTHCHECK .*127\.0\.0\.1:8081/health' <<<"$joined"
check "Dockerfile builds llama-server portably from the pinned toolchain" \
  grep -qE 'LLAMA_POOL_PORTABLE=1 .*scripts/llama-toolchain.sh server-path' <<<"$joined"
check "compose health check and port match the image" \
  grep -q '"http://127.0.0.1:8081/health"' "$root/docker/docker-compose.yml"

verify_unit() {
  local tmp
  tmp=$(mktemp -d)
  # The unit names the installed binary; verify it against the one just built.
  sed "s#/usr/local/bin/llama-pool#$pool#" "$root/conf/llama-pool.service" >"$tmp/llama-pool.service"
  systemd-analyze verify "$tmp/llama-pool.service"
  local rc=$?
  rm -rf "$tmp"
  return $rc
}
check "systemd-analyze verify conf/llama-pool.service" verify_unit

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
