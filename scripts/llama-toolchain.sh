#!/usr/bin/env bash
# Builds (once per machine) the real llama-server that tests, benchmarks and `make run`
# use, and a small random-weight demo model, entirely offline: the llama.cpp source comes
# from the npm package node-llama-cpp, which ships the whole tree as a git bundle.
#
#   llama-toolchain.sh server-path   print the llama-server binary (build if needed)
#   llama-toolchain.sh model-path    print the demo GGUF model (build if needed)
#   llama-toolchain.sh model-path DIM LAYERS
#                                    a larger random-weight model (e.g. 1024 8, closer to a
#                                    real model's pace), built once and cached by its shape
#   llama-toolchain.sh tool NAME     print another built tool (llama-quantize, ...)
#   llama-toolchain.sh package FILE  fetch only the pinned node-llama-cpp package into FILE
#                                    (the Docker image fetches in one stage, builds in another)
#
# Only the chosen path goes to stdout; progress goes to stderr and to a build log.
# LLAMA_SERVER and MODEL, when they name existing files, win and nothing is built.
# LLAMA_POOL_SOURCE_PACKAGE, a package made by `package`, is used instead of the registry.
set -euo pipefail

readonly NODE_LLAMA_CPP_VERSION="3.22.1"
readonly cache_root="${LLAMA_POOL_CACHE:-$HOME/.cache/llama-pool}"
# By default the build is tuned for this CPU (-march=native), so the key carries the CPU's
# feature flags too: a cache copied to another CPU must not hand out a binary that dies with
# SIGILL. LLAMA_POOL_PORTABLE=1 builds for any x86-64 (Docker images), keyed "portable".
if [ "${LLAMA_POOL_PORTABLE:-0}" = "1" ]; then
  cpu_key=portable
  native=OFF
else
  cpu_key=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | md5sum | cut -c1-8)
  native=ON
fi
# The recipe number goes up whenever the build flags below change, so that a cache built the
# old way is not handed out.
readonly build_recipe=2
readonly cache_dir="$cache_root/node-llama-cpp-$NODE_LLAMA_CPP_VERSION-$cpu_key-r$build_recipe"
readonly bin_dir="$cache_dir/bin"
readonly lock_file="$cache_root/.lock"

log() { printf 'llama-toolchain: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# npm_pack FILE: the pinned node-llama-cpp package from the npm registry, saved as FILE.
npm_pack() {
  command -v npm >/dev/null || die "npm is required to fetch node-llama-cpp@$NODE_LLAMA_CPP_VERSION (apt-get install npm)"
  local tmp
  tmp=$(mktemp -d)
  log "fetching node-llama-cpp@$NODE_LLAMA_CPP_VERSION from the npm registry"
  # npm's own words are what tell a proxy, a certificate or a registry problem apart, so they
  # are kept (--silent would hide errors too) and shown when the fetch fails.
  if ! (cd "$tmp" && npm pack --loglevel=error "node-llama-cpp@$NODE_LLAMA_CPP_VERSION" \
    >"$tmp/npm-pack.log" 2>&1); then
    sed 's/^/llama-toolchain: npm: /' "$tmp/npm-pack.log" >&2
    rm -rf "$tmp"
    die "npm pack node-llama-cpp@$NODE_LLAMA_CPP_VERSION failed (npm's output above; behind a" \
      "TLS-inspecting proxy give npm its CA: NODE_EXTRA_CA_CERTS=FILE, or the Dockerfile's" \
      "EXTRA_CA_CERTS build argument)"
  fi
  mkdir -p "$(dirname "$1")"
  mv "$tmp/node-llama-cpp-$NODE_LLAMA_CPP_VERSION.tgz" "$1"
  rm -rf "$tmp"
}

fetch_source() {
  local src="$cache_dir/src"
  [ -f "$src/CMakeLists.txt" ] && return 0
  local tmp package
  tmp=$(mktemp -d)
  package=${LLAMA_POOL_SOURCE_PACKAGE:-$tmp/node-llama-cpp.tgz}
  [ -n "${LLAMA_POOL_SOURCE_PACKAGE:-}" ] || npm_pack "$package"
  tar -xzf "$package" -C "$tmp" package/llama/gitRelease.bundle ||
    die "$package is not the node-llama-cpp package (no llama/gitRelease.bundle)"
  rm -rf "$src.tmp"
  git clone --quiet "$tmp/package/llama/gitRelease.bundle" "$src.tmp" 2>/dev/null ||
    die "could not clone the llama.cpp bundle shipped in node-llama-cpp"
  mv "$src.tmp" "$src"
  rm -rf "$tmp"
}

build_tools() {
  [ -x "$bin_dir/llama-server" ] && [ -x "$bin_dir/llama-convert-llama2c-to-ggml" ] &&
    [ -x "$bin_dir/llama-quantize" ] && return 0
  fetch_source
  local build="$cache_dir/build" jobs
  jobs=$(nproc 2>/dev/null || echo 2)
  log "building llama-server (CPU, -j$jobs; about 5 minutes on 2 cores, once per machine); log: $cache_dir/build.log"
  # No Intel AMX kernels: on CPUs that have AMX (seen on a Sapphire Rapids-class machine),
  # -march=native turns them on, and this llama.cpp version then dies with SIGSEGV in
  # ggml_backend_amx_mul_mat while loading the demo model (the warm-up decode), for chat and
  # embeddings alike. The AVX-512/AVX2 kernels serve the same models.
  local no_amx=""
  if [ "$(uname -m)" = "x86_64" ]; then
    no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  fi
  {
    cmake -S "$cache_dir/src" -B "$build" -DCMAKE_BUILD_TYPE=Release \
      -DBUILD_SHARED_LIBS=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE="$native" \
      -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
      -DCMAKE_C_FLAGS="$no_amx" -DCMAKE_CXX_FLAGS="$no_amx" &&
      cmake --build "$build" -j"$jobs" --target llama-server llama-convert-llama2c-to-ggml llama-quantize
  } >"$cache_dir/build.log" 2>&1 || die "llama.cpp build failed; see $cache_dir/build.log"
  mkdir -p "$bin_dir"
  for t in llama-server llama-convert-llama2c-to-ggml llama-quantize; do
    install -m 0755 "$build/bin/$t" "$bin_dir/$t"
  done
  # The build tree is large and only needed again for a new version.
  rm -rf "$build"
}

# build_model [DIM LAYERS]: the demo model (dim 288, 6 layers), or a random-weight model of
# that shape with 64-wide attention heads. Cached by shape; the name of the demo is kept.
build_model() {
  local dim="${1:-288}" layers="${2:-6}" heads name
  if [ "$#" -eq 0 ]; then
    heads=6
    name=demo-q8_0.gguf
  else
    heads=$((dim / 64))
    name="random-d${dim}-l${layers}-h${heads}-q8_0.gguf"
  fi
  local model="$cache_dir/models/$name"
  [ -f "$model" ] && { echo "$model"; return 0; }
  build_tools
  local here tmp
  here=$(cd "$(dirname "$0")" && pwd)
  tmp=$(mktemp -d)
  mkdir -p "$cache_dir/models"
  log "writing a random-weight model, dim $dim x $layers layers (llama2.c checkpoint -> GGUF -> Q8_0)"
  python3 "$here/make_random_llama2c.py" --out "$tmp/random.bin" --dim "$dim" --layers "$layers" \
    --heads "$heads" --seed 1234 >&2
  "$bin_dir/llama-convert-llama2c-to-ggml" \
    --copy-vocab-from-model "$cache_dir/src/models/ggml-vocab-llama-spm.gguf" \
    --llama2c-model "$tmp/random.bin" --llama2c-output-model "$tmp/random-f32.gguf" >"$tmp/convert.log" 2>&1 ||
    die "model conversion failed: $(tail -n 5 "$tmp/convert.log")"
  rm -f "$tmp/random.bin"
  python3 "$here/gguf_set_context_length.py" "$tmp/random-f32.gguf" 4096 >&2
  "$bin_dir/llama-quantize" "$tmp/random-f32.gguf" "$tmp/model.gguf" Q8_0 >"$tmp/quantize.log" 2>&1 ||
    die "quantize failed: $(tail -n 5 "$tmp/quantize.log")"
  mv "$tmp/model.gguf" "$model"
  rm -rf "$tmp"
  echo "$model"
}

with_lock() {
  mkdir -p "$cache_root"
  exec 9>"$lock_file"
  flock 9
  "$@"
}

case "${1:-}" in
  server-path)
    if [ -n "${LLAMA_SERVER:-}" ]; then
      [ -x "$LLAMA_SERVER" ] || die "LLAMA_SERVER=$LLAMA_SERVER is not an executable file"
      readlink -f "$LLAMA_SERVER"
      exit 0
    fi
    with_lock build_tools
    echo "$bin_dir/llama-server"
    ;;
  model-path)
    if [ "$#" -eq 3 ]; then
      case "$2$3" in *[!0-9]*) die "usage: $0 model-path [DIM LAYERS]" ;; esac
      [ $(($2 % 64)) -eq 0 ] || die "DIM must be a multiple of 64"
      with_lock build_model "$2" "$3"
      exit 0
    fi
    [ "$#" -eq 1 ] || die "usage: $0 model-path [DIM LAYERS]"
    if [ -n "${MODEL:-}" ]; then
      [ -f "$MODEL" ] || die "MODEL=$MODEL does not exist"
      readlink -f "$MODEL"
      exit 0
    fi
    with_lock build_model
    ;;
  package)
    [ -n "${2:-}" ] || die "usage: $0 package FILE"
    npm_pack "$2"
    echo "$2"
    ;;
  tool)
    [ -n "${2:-}" ] || die "usage: $0 tool NAME"
    with_lock build_tools
    [ -x "$bin_dir/$2" ] || die "no tool named $2 in $bin_dir"
    echo "$bin_dir/$2"
    ;;
  *)
    die "usage: $0 server-path | model-path | tool NAME | package FILE"
    ;;
esac
