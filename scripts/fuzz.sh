#!/usr/bin/env bash
# Builds the libFuzzer targets of test/fuzz with clang in their own build directory and runs
# each for a bounded time on a scratch copy of its committed seed corpus (the committed
# corpus never grows by itself: new seeds are added by hand, crash inputs among them).
#
#   scripts/fuzz.sh                     every target, FUZZ_SECONDS (30) each
#   FUZZ_SECONDS=600 scripts/fuzz.sh fuzz_chunked fuzz_config
#
# A crash or broken invariant fails the run; its input is kept under
# $FUZZ_BUILD_DIR/findings/<target>/ and the line to reproduce it is printed.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-30}"
build="${FUZZ_BUILD_DIR:-build-fuzz}"
jobs="${JOBS:-$(nproc 2>/dev/null || echo 2)}"

# Longest input per target: room for a realistic message of that kind plus mutations, and
# short enough that a run explores rather than shuffles big inputs.
declare -A max_len=(
  [fuzz_http_request]=4096
  [fuzz_http_response]=4096
  [fuzz_chunked]=2048
  [fuzz_target_route]=1024
  [fuzz_config]=8192
  [fuzz_sse_usage]=8192
  [fuzz_affinity]=4096
  [fuzz_health]=1024
  [fuzz_exposition]=8192
  [fuzz_chunker]=4096
  [fuzz_sse_events]=8192
)
# Tokens each kind of input is made of (libFuzzer -dict), so that mutations reach the
# interesting keys and framing sooner than byte flips would.
declare -A dict=(
  [fuzz_http_request]=http
  [fuzz_http_response]=http
  [fuzz_chunked]=http
  [fuzz_target_route]=http
  [fuzz_config]=json
  [fuzz_sse_usage]=json
  [fuzz_affinity]=json
  [fuzz_health]=json
  [fuzz_exposition]=exposition
  [fuzz_chunker]=text
  [fuzz_sse_events]=sse
)
all_targets=(fuzz_http_request fuzz_http_response fuzz_chunked fuzz_target_route fuzz_config
             fuzz_sse_usage fuzz_affinity fuzz_health fuzz_exposition fuzz_chunker
             fuzz_sse_events)
targets=("$@")
[ "${#targets[@]}" -eq 0 ] && targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
  [ -n "${max_len[$t]:-}" ] || { echo "fuzz: unknown target '$t' (known: ${all_targets[*]})" >&2; exit 2; }
done

command -v clang++ >/dev/null || { echo "fuzz: clang++ not found (make deps-extra installs it)" >&2; exit 2; }

echo "fuzz: building ${#targets[@]} target(s) in $build" >&2
CC=clang CXX=clang++ cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DLLAMA_POOL_FUZZ=ON -DBUILD_TESTING=OFF >/dev/null
cmake --build "$build" -j"$jobs" --target "${targets[@]}" >/dev/null

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$build/logs"

# libFuzzer sees a sanitizer report only when the sanitizer stops the process.
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

passed=0
failed=0
for t in "${targets[@]}"; do
  corpus="$work/$t"
  findings="$build/findings/$t"
  log="$build/logs/$t.log"
  mkdir -p "$corpus" "$findings"
  if [ -d "test/fuzz/corpus/$t" ]; then
    cp test/fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null || true
  fi
  rc=0
  "$build/fuzz/$t" "$corpus" -max_total_time="$seconds" -max_len="${max_len[$t]}" \
    -dict="test/fuzz/dict/${dict[$t]}.dict" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$findings/" \
    >"$log" 2>&1 || rc=$?
  runs="$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)"
  [ -n "$runs" ] || runs="$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n 1)"
  [ -n "$runs" ] || runs="?"
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1))
    printf '%-20s ok      %12s executions in %ss\n' "$t" "$runs" "$seconds"
  else
    failed=$((failed + 1))
    printf '%-20s FAILED  %12s executions (exit %s)\n' "$t" "$runs" "$rc"
    grep -m 3 -E 'ERROR: |fuzz invariant violated|runtime error|what\(\):|SUMMARY:' \
      "$log" | sed 's/^/    /' || true
    artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)"
    if [ -n "$artifact" ]; then
      echo "    input: $artifact"
      echo "    reproduce: $build/fuzz/$t $artifact"
    fi
    echo "    log: $log"
  fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
