#!/usr/bin/env bash
# `make docker-test`: builds the image and runs it on a real Docker engine.
#   - starts Debian's dockerd by hand when none runs, and makes debian:12 / debian:12-slim
#     with debootstrap when no registry gives them (scripts/docker-engine.sh);
#   - builds docker/Dockerfile (the layer cache under ~/.cache/llama-pool/docker makes a
#     second build take seconds unless scripts/llama-toolchain.sh changed);
#   - one container with the demo model: /health, a completion, /metrics, the HEALTHCHECK
#     turns healthy, uid 10001 with no capabilities, job records kept on a volume across
#     containers, and a plain `docker stop` during requests ends in exit code 0 in time;
#   - compose `up` with docker-compose.yml's defaults (the pool and Prometheus; Grafana and
#     n8n images cannot be had here), Prometheus scrapes the pool (up = 1) and its alert
#     rules load healthy, then `down`;
#   - a front pool and two worker containers sharing one DNS name (a network alias, as the
#     Kubernetes headless Service gives): the front finds both and spreads requests.
# Prints PASS/FAIL lines, the timings, and a summary; exits 1 on any failure. When no
# engine can run here at all (not root and no engine to talk to, or dockerd cannot start
# in this kernel), prints a SKIPPED line and exits 0, or 1 with LLAMA_POOL_DOCKER_REQUIRED=1.
# Usage: docker_test.sh MODEL.gguf
# LLAMA_POOL_DOCKER_BUILD=0 tests the llama-pool:latest already there instead of building it.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
model=${1:?usage: docker_test.sh MODEL.gguf}
# shellcheck source=../../scripts/docker-engine.sh
source "$root/scripts/docker-engine.sh"

image=llama-pool:latest  # the name compose and the Kubernetes manifests use
prefix="lpdt$$"  # every container, volume and network this run makes; removed at the end
scratch=$(mktemp -d)
passed=0
failed=0
docker=$(docker_client 2>/dev/null || true)

say() { echo "docker-test: $*" >&2; }
check() {  # check NAME COMMAND...
  local name=$1
  shift
  if "$@" >"$scratch/check.out" 2>&1; then
    echo "PASS $name"
    passed=$((passed + 1))
  else
    echo "FAIL $name"
    failed=$((failed + 1))
  fi
  sed 's/^/    /' "$scratch/check.out"
}
skip() {
  echo "SKIPPED docker-test: $*"
  [ "${LLAMA_POOL_DOCKER_REQUIRED:-0}" = 1 ] && exit 1
  exit 0
}

compose() {  # docker-compose.yml as a user runs it, plus the Prometheus stand-in
  MODELS_DIR=$(dirname "$model") MODEL_FILE=$(basename "$model") \
    LLAMA_POOL_HOST_PORT=$compose_pool_port PROMETHEUS_HOST_PORT=$compose_prom_port \
    docker-compose -p "$prefix" -f "$root/docker/docker-compose.yml" \
    -f "$root/test/deploy/compose.test.yml" "$@"
}
cleanup() {
  if [ -n "$docker" ] && "$docker" info >/dev/null 2>&1; then
    [ -n "${compose_pool_port:-}" ] && compose down -v --remove-orphans >/dev/null 2>&1
    "$docker" ps -aq --filter "name=^$prefix" | xargs -r "$docker" rm -f >/dev/null
    "$docker" volume ls -q --filter "name=^$prefix" | xargs -r "$docker" volume rm >/dev/null
    "$docker" network ls -q --filter "name=^$prefix" | xargs -r "$docker" network rm >/dev/null
  fi
  docker_engine_down
  rm -rf "$scratch"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ -f "$model" ] || { say "no model at $model"; exit 1; }
if [ "$(id -u)" -ne 0 ] && [ -z "${DOCKER_HOST:-}" ] && ! [ -w /var/run/docker.sock ]; then
  skip "not root and no Docker engine this user may use (DOCKER_HOST or /var/run/docker.sock)"
fi
[ -n "$docker" ] || { say "no docker client: scripts/install-deps.sh --docker installs docker.io"; exit 1; }
docker_engine_up || skip "the Docker engine cannot start on this machine (its log is above)"
docker_base_images || { say "could not make the debian:12 base images"; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# wait_for SECONDS COMMAND...: polls COMMAND once a second until it succeeds.
wait_for() {
  local limit=$1 waited=0
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$waited" -ge "$limit" ] && return 1
    sleep 1
    waited=$((waited + 1))
  done
}
host_port() { "$docker" port "$1" 8081/tcp | head -n1 | sed 's/.*://'; }
http_ok() { curl -fsS -m 5 "$1"; }
metric_sum() {  # metric_sum URL REGEX: the sum of the samples whose line matches REGEX
  curl -fsS -m 5 "$1/metrics" | awk -v re="$2" '$0 !~ /^#/ && $0 ~ re {s += $NF} END {print s + 0}'
}
json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

# --- the image ---------------------------------------------------------------------------
build_image() {
  local started=$SECONDS
  # The certificates this machine added to its trust store (a TLS-inspecting proxy's, say)
  # go to the stage that fetches the llama.cpp source with npm.
  local ca=""
  ca=$(cat /usr/local/share/ca-certificates/*.crt 2>/dev/null)
  "$docker" build -q --build-arg EXTRA_CA_CERTS="$ca" -f "$root/docker/Dockerfile" -t "$image" "$root" ||
    return 1
  echo "build: $((SECONDS - started)) s"
}
if [ "${LLAMA_POOL_DOCKER_BUILD:-1}" = 1 ]; then
  say "building $image (about 25 minutes the first time on 2 cores, seconds when cached)"
  check "image builds" build_image
fi
"$docker" image inspect "$image" >/dev/null 2>&1 || { say "no image, nothing more to test"; exit 1; }
check "image size" bash -c "$docker image inspect -f '{{.Size}}' $image | awk '{printf \"%.0f MB\n\", \$1 / 1e6}'"

# --- one container -----------------------------------------------------------------------
run_pool() {  # run_pool NAME [docker run options]: the image with the demo model
  local name=$1
  shift
  "$docker" run -d --name "$name" -p 127.0.0.1::8081 -v "$(dirname "$model"):/models:ro" \
    -e LLAMA_POOL_MODEL="/models/$(basename "$model")" "$@" "$image" >/dev/null
}
one="${prefix}-one"
started=$SECONDS
run_pool "$one" -v "${prefix}-data:/var/lib/llama-pool"
url="http://127.0.0.1:$(host_port "$one")"
serves_health() {
  wait_for 180 http_ok "$url/health" || { "$docker" logs --tail 20 "$one"; return 1; }
  echo "start to /health 200: $((SECONDS - started)) s"
}
check "container serves /health" serves_health
completes() {
  curl -fsS -m 60 "$url/completion" -H 'Content-Type: application/json' \
    -d '{"prompt": "Once upon a time", "n_predict": 8}' | json_field '["content"]'
}
check "container serves a completion" completes
serves_metrics() {
  curl -fsS -m 5 "$url/metrics" >"$scratch/metrics" && grep -m3 -E '^llama_pool_requests_total' "$scratch/metrics"
}
check "container serves /metrics" serves_metrics
is_healthy() { [ "$("$docker" inspect -f '{{.State.Health.Status}}' "$1")" = healthy ]; }
healthcheck_healthy() {
  local status=""
  wait_for 60 is_healthy "$one"
  status=$("$docker" inspect -f '{{.State.Health.Status}}' "$one")
  echo "health status: $status after $((SECONDS - started)) s"
  [ "$status" = healthy ]
}
check "HEALTHCHECK becomes healthy" healthcheck_healthy
runs_unprivileged() {
  local ids caps
  ids=$("$docker" exec "$one" id -u):$("$docker" exec "$one" id -g)
  # The pool is pid 1; its workers are its children. Every one must hold no capability.
  caps=$("$docker" exec "$one" sh -c 'grep -h -E "^Cap(Eff|Prm|Amb):" /proc/[0-9]*/status | sort -u')
  echo "uid:gid $ids"
  echo "$caps"
  [ "$ids" = "10001:10001" ] && ! grep -qvE ':\s+0000000000000000$' <<<"$caps"
}
check "runs as uid 10001 with no capabilities" runs_unprivileged

# Job records: a job finished in one container is found by the next one on the same volume.
job_id=""
jobs_survive_containers() {
  local state=""
  job_id=$(curl -fsS -m 10 "$url/v1/jobs" -H 'Content-Type: application/json' \
    -d '{"type": "summarize", "text": "The cat sat on the mat. It was warm there.", "n_predict": 8}' |
    json_field '["id"]') || return 1
  echo "job $job_id"
  for _ in $(seq 120); do
    state=$(curl -fsS -m 5 "$url/v1/jobs/$job_id" | json_field '["state"]')
    [ "$state" = succeeded ] || [ "$state" = failed ] && break
    sleep 1
  done
  echo "state in the first container: $state"
  [ "$state" = succeeded ] || return 1
  "$docker" rm -f "$one" >/dev/null
  run_pool "${prefix}-two" -v "${prefix}-data:/var/lib/llama-pool"
  url="http://127.0.0.1:$(host_port "${prefix}-two")"
  wait_for 180 http_ok "$url/" || return 1
  state=$(curl -fsS -m 5 "$url/v1/jobs/$job_id" | json_field '["state"]')
  echo "state in a new container on the same volume: $state"
  [ "$state" = succeeded ]
}
check "job records kept on a volume across containers" jobs_survive_containers

in_flight() { [ "$(metric_sum "$1" '^llama_pool_inflight_requests')" -gt 0 ]; }
# A plain `docker stop` (10 s, SIGTERM then SIGKILL) while streams run: exit code 0.
stop_during_requests() {
  local name="${prefix}-two" i inflight rc elapsed t0
  wait_for 180 http_ok "$url/health" || return 1
  local streams=()
  for i in 1 2 3 4; do
    curl -sS -N -m 60 "$url/completion" -H 'Content-Type: application/json' \
      -d '{"prompt": "Tell a long story", "n_predict": 100000, "ignore_eos": true, "stream": true}' \
      >"$scratch/stream$i" 2>&1 &
    streams+=($!)
  done
  wait_for 30 in_flight "$url"
  inflight=$(metric_sum "$url" '^llama_pool_inflight_requests')
  echo "requests in flight at stop: $inflight"
  t0=$(date +%s%N)
  "$docker" stop "$name" >/dev/null
  elapsed=$((($(date +%s%N) - t0) / 1000000))
  # The streams only: a dockerd this script started is a child of this shell too.
  wait "${streams[@]}"
  # Past its 10 s, docker stop sends SIGKILL, and the exit code reads 137: 0 means the pool
  # drained and stopped its workers within the default stop time.
  rc=$("$docker" inspect -f '{{.State.ExitCode}}' "$name")
  echo "docker stop took ${elapsed} ms, exit code $rc"
  # The pool's own timeline of the stop (its log stamps each step), for a stop near the 10 s.
  "$docker" logs "$name" 2>&1 |
    grep -aE 'event=(shutdown_requested|requests_ended|workers_stopped|stopped)( |$)' |
    sed 's/^/    /'
  for i in 1 2 3 4; do
    echo "stream $i: $(grep -c '^data: ' "$scratch/stream$i") events, last: $(tail -c 160 "$scratch/stream$i" | tr '\n' ' ')"
  done
  [ "$inflight" -gt 0 ] && [ "$rc" = 0 ]
}
check "docker stop during requests exits 0 within the default stop time" stop_during_requests
"$docker" rm -f "${prefix}-two" >/dev/null 2>&1

# --- compose -----------------------------------------------------------------------------
compose_pool_port=$(free_port)
compose_prom_port=$(free_port)
compose_up() {
  local started=$SECONDS
  compose build -q prometheus 2>&1 | tail -n 5 &&
    compose up -d llama-pool prometheus 2>&1 | tail -n 5 || return 1
  wait_for 180 http_ok "http://127.0.0.1:$compose_pool_port/health" || return 1
  echo "up to /health 200: $((SECONDS - started)) s"
}
check "compose up (pool and Prometheus, default settings)" compose_up
prometheus_scrapes() {
  local prom="http://127.0.0.1:$compose_prom_port" up=""
  for _ in $(seq 90); do
    up=$(curl -fsS -m 5 "$prom/api/v1/query?query=up%7Bjob%3D%22llama-pool%22%7D" 2>/dev/null |
      json_field '["data"]["result"][0]["value"][1]' 2>/dev/null)
    [ "$up" = 1 ] && break
    sleep 1
  done
  echo "up{job=\"llama-pool\"} = ${up:-none}"
  [ "$up" = 1 ] || return 1
  # Rules read "unknown" until their first evaluation (every 15 s): wait for a verdict.
  for _ in $(seq 60); do
    rules_verdict "$prom" >"$scratch/rules" 2>&1 && break
    grep -q '^err' "$scratch/rules" && break
    sleep 1
  done
  cat "$scratch/rules"
  rules_verdict "$prom" >/dev/null
}
rules_verdict() {  # all alert rules loaded and evaluated without error
  curl -fsS -m 5 "$1/api/v1/rules" | python3 -c '
import json, sys
rules = [r for g in json.load(sys.stdin)["data"]["groups"] for r in g["rules"]]
errors = [(r["name"], r.get("lastError")) for r in rules if r.get("health") == "err"]
pending = [r["name"] for r in rules if r.get("health") != "ok"]
print(f"err: {errors}" if errors else f"{len(rules)} rules, not yet evaluated: {pending or 0}")
sys.exit(bool(errors or pending) or not rules)'
}
check "Prometheus scrapes the pool (up = 1) and its rules are healthy" prometheus_scrapes
compose_down() {
  compose down -v 2>&1 | tail -n 3 || return 1
  [ -z "$("$docker" ps -aq --filter "label=com.docker.compose.project=$prefix")" ]
}
check "compose down removes its containers" compose_down

# --- a front pool and two worker containers under one DNS name ---------------------------
net="${prefix}-net"
front="${prefix}-front"
# The front's own per-upstream series (it also relays each worker pool's series, with
# exported_worker labels): one per address the name resolved to, capacity > 0 once checked.
upstream_capacities() { curl -fsS -m 5 "$1/metrics" | grep -E '^llama_pool_worker_capacity.worker="[^"]*"} '; }
sees_two_upstreams() { [ "$(upstream_capacities "$1" | awk '$NF > 0' | wc -l)" -ge 2 ]; }
front_spreads() {
  local w count total=0 spread=1
  "$docker" network create "$net" >/dev/null || return 1
  for w in 1 2; do
    run_pool "${prefix}-worker$w" --network "$net" --network-alias llama-pool-workers \
      -e LLAMA_POOL_WORKERS=1 || return 1
  done
  # As docker/kubernetes/front.yaml runs it.
  "$docker" run -d --name "$front" --network "$net" -p 127.0.0.1::8081 "$image" \
    --workers 0 --host 0.0.0.0 --port 8081 --upstream dns://llama-pool-workers:8081 \
    --dns-interval 5 >/dev/null || return 1
  local furl="http://127.0.0.1:$(host_port "$front")"
  for w in 1 2; do
    wait_for 180 http_ok "http://127.0.0.1:$(host_port "${prefix}-worker$w")/health" || return 1
  done
  wait_for 60 http_ok "$furl/health" || { "$docker" logs --tail 20 "$front"; return 1; }
  # Both addresses found and checked: the front's per-upstream series name two workers.
  wait_for 60 sees_two_upstreams "$furl"
  upstream_capacities "$furl"
  # Counted on the workers, before and after: the front's own checks reach them too.
  local before=()
  for w in 1 2; do
    before[w]=$(metric_sum "http://127.0.0.1:$(host_port "${prefix}-worker$w")" \
      '^llama_pool_requests_total.*route="/completion".*code="200"')
  done
  for _ in $(seq 12); do
    curl -fsS -m 60 "$furl/completion" -H 'Content-Type: application/json' \
      -d '{"prompt": "Hello", "n_predict": 4}' >/dev/null || return 1
  done
  for w in 1 2; do
    count=$(metric_sum "http://127.0.0.1:$(host_port "${prefix}-worker$w")" \
      '^llama_pool_requests_total.*route="/completion".*code="200"')
    count=$((count - before[w]))
    echo "worker container $w served $count of the 12 completions sent to the front"
    total=$((total + count))
    [ "$count" -gt 0 ] || spread=0
  done
  [ "$total" -eq 12 ] && [ "$spread" = 1 ]
}
check "a front pool finds two worker containers under one DNS name and spreads requests" front_spreads

echo "docker-test: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
