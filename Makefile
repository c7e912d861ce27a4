# llama-pool: every target installs what it needs first, so a fresh machine needs no manual
# step. `make run` and `make test` are the two commands a newcomer needs. `make deps` is what
# building and running need; `make deps-test` adds what the tests, benchmarks and the format
# check run beside the pool (promtool, nginx, HAProxy, wrk, yamllint, clang-format...).

BUILD_DIR  ?= build
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
PORT       ?= 8081
WORKERS    ?= 2
TOOLCHAIN  := bash scripts/llama-toolchain.sh

.PHONY: all deps deps-test deps-extra build bitnet-note test-bitnet test test-unit test-integration test-e2e run format \
        check-format llama-server-path demo-model-path bench test-asan test-tsan fuzz clean \
        deps-docker docker-test

all: build

deps:
	@bash scripts/install-deps.sh

deps-test:
	@bash scripts/install-deps.sh --test

deps-extra:
	@bash scripts/install-deps.sh --extra

deps-docker:
	@bash scripts/install-deps.sh --docker

build: deps
	@cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD_DIR) -j$(JOBS)

llama-server-path: deps
	@$(TOOLCHAIN) server-path

demo-model-path: deps
	@$(TOOLCHAIN) model-path

# Unit and integration tests need only the build; end-to-end tests also need a real
# llama-server and the demo model, which the toolchain script builds once per machine.
# The BitNet suite (label bitnet) runs against ../shared/bitnet when that folder exists.
BITNET_DIR ?= $(or $(LLAMA_POOL_BITNET_DIR),$(CURDIR)/../shared/bitnet)
bitnet-note:
	@if [ -x "$(BITNET_DIR)/llama-server" ]; then \
	   echo "BitNet end-to-end suite: against $(BITNET_DIR)"; \
	 else echo "BitNet end-to-end suite: SKIPPED (no llama-server in $(BITNET_DIR))"; fi

test: build deps-test bitnet-note
	@LLAMA_POOL_BITNET_DIR="$(BITNET_DIR)" LLAMA_POOL_TEST_SERVER="$$($(TOOLCHAIN) server-path)" \
	 LLAMA_POOL_TEST_MODEL="$$($(TOOLCHAIN) model-path)" \
	 ctest --test-dir $(BUILD_DIR) --output-on-failure -j$(JOBS) --timeout 600

test-unit: build deps-test
	@ctest --test-dir $(BUILD_DIR) --output-on-failure -j$(JOBS) -L unit

test-integration: build deps-test
	@ctest --test-dir $(BUILD_DIR) --output-on-failure -j$(JOBS) -L integration

test-bitnet: build deps-test bitnet-note
	@LLAMA_POOL_BITNET_DIR="$(BITNET_DIR)" ctest --test-dir $(BUILD_DIR) --output-on-failure -L bitnet

test-e2e: build deps-test bitnet-note
	@LLAMA_POOL_BITNET_DIR="$(BITNET_DIR)" LLAMA_POOL_TEST_SERVER="$$($(TOOLCHAIN) server-path)" \
	 LLAMA_POOL_TEST_MODEL="$$($(TOOLCHAIN) model-path)" \
	 ctest --test-dir $(BUILD_DIR) --output-on-failure -L e2e

# Unit and integration tests under sanitizers, each in its own build directory. Tests that
# measure memory are left out: sanitizers keep freed memory in quarantine, so RSS bounds
# say nothing under them (those tests run in `make test`), and the browser test spends its
# time in chromium (the console's threads are covered by its unit tests there).
SANITIZER_SKIP := observability|memory stays bounded|console_browser
# Only what those tests run: the end-to-end tests are not built there.
SANITIZER_TARGETS := unit-tests integration-tests llama-pool fake-llama-server
test-asan: deps-test
	@cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DLLAMA_POOL_SANITIZE=address >/dev/null
	@cmake --build build-asan -j$(JOBS) --target $(SANITIZER_TARGETS)
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	 ctest --test-dir build-asan --output-on-failure -j$(JOBS) -L "unit|integration" -E "$(SANITIZER_SKIP)"

test-tsan: deps-test
	@cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug -DLLAMA_POOL_SANITIZE=thread >/dev/null
	@cmake --build build-tsan -j$(JOBS) --target $(SANITIZER_TARGETS)
	@TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
	 ctest --test-dir build-tsan --output-on-failure -j$(JOBS) -L "unit|integration" -E "$(SANITIZER_SKIP)"

# The image built and run on a real Docker engine (test/deploy/docker_test.sh): it starts
# Debian's dockerd when none runs and stops it after, makes the debian:12 base images with
# debootstrap when no registry gives them, and keeps images and the layer cache in
# ~/.cache/llama-pool/docker. Needs root (or a usable engine). About 25 minutes the first
# time on 2 cores (llama.cpp is built inside the image), a few minutes after. CI runs it as
# its own step; `make test` does not (it stays the quick loop).
docker-test: deps-docker
	@bash test/deploy/docker_test.sh "$$($(TOOLCHAIN) model-path)"

# libFuzzer targets (test/fuzz), FUZZ_SECONDS each (default 30), clang build in build-fuzz.
fuzz: deps-extra
	@bash scripts/fuzz.sh

run: build
	@server="$$($(TOOLCHAIN) server-path)" && model="$$($(TOOLCHAIN) model-path)" && \
	 echo "llama-pool: serving on http://127.0.0.1:$(PORT) with $(WORKERS) workers (model $$model)" >&2 && \
	 exec $(BUILD_DIR)/llama-pool --config conf/llama-pool.json --port $(PORT) \
	   --workers $(WORKERS) --llama-server "$$server" --model "$$model"

# Side-by-side benchmarks (wrk, nginx, HAProxy from Debian); rewrites docs/BENCHMARKS.md.
bench: build deps-test
	@python3 scripts/bench/bench.py --write

# Chaos: faults injected in turn under a steady mixed load on real workers; fails on any lost
# request, orphan process or resource growth (scripts/chaos/chaos.py; CHAOS_SCALE stretches
# every phase). A short version runs in `make test`.
.PHONY: chaos
chaos: build deps-test
	@LLAMA_POOL_TEST_SERVER="$$($(TOOLCHAIN) server-path)" \
	 LLAMA_POOL_TEST_MODEL="$$($(TOOLCHAIN) model-path)" \
	 python3 scripts/chaos/chaos.py --build $(BUILD_DIR)

# Soak: a long mixed load on real workers with periodic faults (a worker killed, 500s),
# sampling the pool's RSS, descriptors and threads; fails on growth after the warm-up
# (scripts/chaos/soak.py). SOAK_SECONDS, 600 by default.
SOAK_SECONDS ?= 600
.PHONY: soak
soak: build deps-test
	@LLAMA_POOL_TEST_SERVER="$$($(TOOLCHAIN) server-path)" \
	 LLAMA_POOL_TEST_MODEL="$$($(TOOLCHAIN) model-path)" \
	 python3 scripts/chaos/soak.py --build $(BUILD_DIR) --seconds $(SOAK_SECONDS)

format: deps-test
	@git ls-files '*.cpp' '*.hpp' | xargs clang-format -i

check-format: deps-test
	@git ls-files '*.cpp' '*.hpp' | xargs clang-format --dry-run --Werror

clean:
	rm -rf $(BUILD_DIR) build-asan build-tsan build-fuzz
