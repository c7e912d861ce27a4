#!/usr/bin/env bash
# Deployment files, checked as far as this machine allows (no Docker engine runs here):
#   docker-compose config validates the compose file;
#   the Dockerfile's COPY sources exist, its runtime stage installs every shared library the
#   two binaries need, it runs as a non-root user and health-checks /health;
#   systemd-analyze verifies the unit.
# Usage: check_deploy.sh BUILD/llama-pool LLAMA_SERVER_BINARY
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
pool=$1
server=$2
passed=0
failed=0
check() {  # check NAME COMMAND...
  local name=$1
  shift
  if "$@" >/tmp/check_deploy.out 2>&1; then
    echo "PASS $name"
    passed=$((passed + 1))
  else
    echo "FAIL $name"
    sed 's/^/    /' /tmp/check_deploy.out
    failed=$((failed + 1))
  fi
}

dockerfile=$root/docker/Dockerfile
# The Dockerfile with continued lines joined, for checks that read whole instructions.
joined=$(sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$dockerfile")
check "docker-compose config" docker-compose -f "$root/docker/docker-compose.yml" config -q
check "docker-compose config (groups)" docker-compose -f "$root/docker/docker-compose.groups.yml" config -q
# The groups example parses and names only known keys (its model files exist only in a
# user's models folder, so the file checks are not run here).
groups_config_parses() {
  LLAMA_SERVER="$server" "$pool" --check-config --config "$root/conf/llama-pool.groups.json" 2>&1 |
    grep -v 'does not exist or is not a file' | grep -q 'error' && return 1
  return 0
}
check "groups example config has only known keys" groups_config_parses

copy_sources_exist() {
  grep -E '^COPY ' "$dockerfile" | grep -v -- '--from=' | while read -r _ src _; do
    [ "$src" = "." ] && continue
    [ -e "$root/$src" ] || { echo "COPY source $src does not exist"; exit 1; }
  done
}
check "Dockerfile COPY sources exist" copy_sources_exist

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
check "Dockerfile runs as a non-root user" grep -qE '^USER +[a-z]' "$dockerfile"
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
