#!/usr/bin/env bash
# The Docker image builds llama-pool with its own CMake flags (Release, -O3), where GCC warns
# about things it does not see at the RelWithDebInfo level `make` uses, and -Werror turns
# those into a broken image. No Docker engine here, so this builds the binary the way the
# Dockerfile's builder stage does: same flags, read from the Dockerfile itself.
set -euo pipefail
src="$1"
out="$2"
line="$(grep -E '^RUN cmake -S \. -B /build ' "$src/docker/Dockerfile" || true)"
if [[ -z "$line" ]]; then
    echo "check_release_build: no 'RUN cmake -S . -B /build ...' line in docker/Dockerfile" >&2
    exit 1
fi
# The flags between "-B /build" and the line's continuation.
flags="$(sed -E 's/^RUN cmake -S \. -B \/build (.*)\\$/\1/' <<<"$line")"
echo "check_release_build: cmake flags from the Dockerfile: $flags"
# shellcheck disable=SC2086  # the flags are words, as in the Dockerfile
cmake -S "$src" -B "$out" $flags >/dev/null
cmake --build "$out" --target llama-pool -j"$(nproc)"
"$out/llama-pool" --version
