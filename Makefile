# llama-pool: every target installs what it needs first (make deps), so a fresh machine
# needs no manual step. `make run` and `make test` are the two commands a newcomer needs.

BUILD_DIR  ?= build
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
PORT       ?= 8081
WORKERS    ?= 2
TOOLCHAIN  := bash scripts/llama-toolchain.sh

.PHONY: all deps deps-extra build test test-unit test-integration test-e2e run format \
        check-format llama-server-path demo-model-path bench clean

all: build

deps:
	@bash scripts/install-deps.sh

deps-extra:
	@bash scripts/install-deps.sh --extra

build: deps
	@cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD_DIR) -j$(JOBS)

llama-server-path: deps
	@$(TOOLCHAIN) server-path

demo-model-path: deps
	@$(TOOLCHAIN) model-path

# Unit and integration tests need only the build; end-to-end tests also need a real
# llama-server and the demo model, which the toolchain script builds once per machine.
test: build
	@LLAMA_POOL_TEST_SERVER="$$($(TOOLCHAIN) server-path)" \
	 LLAMA_POOL_TEST_MODEL="$$($(TOOLCHAIN) model-path)" \
	 ctest --test-dir $(BUILD_DIR) --output-on-failure -j$(JOBS) --timeout 600

test-unit: build
	@ctest --test-dir $(BUILD_DIR) --output-on-failure -j$(JOBS) -L unit

test-integration: build
	@ctest --test-dir $(BUILD_DIR) --output-on-failure -j$(JOBS) -L integration

test-e2e: build
	@LLAMA_POOL_TEST_SERVER="$$($(TOOLCHAIN) server-path)" \
	 LLAMA_POOL_TEST_MODEL="$$($(TOOLCHAIN) model-path)" \
	 ctest --test-dir $(BUILD_DIR) --output-on-failure -L e2e

run: build
	@server="$$($(TOOLCHAIN) server-path)" && model="$$($(TOOLCHAIN) model-path)" && \
	 echo "llama-pool: serving on http://127.0.0.1:$(PORT) with $(WORKERS) workers (model $$model)" >&2 && \
	 exec $(BUILD_DIR)/llama-pool --config conf/llama-pool.json --port $(PORT) \
	   --workers $(WORKERS) --llama-server "$$server" --model "$$model"

# Side-by-side benchmarks (wrk, nginx, HAProxy from Debian); rewrites docs/BENCHMARKS.md.
bench: build
	@python3 scripts/bench/bench.py --write

format:
	@git ls-files '*.cpp' '*.hpp' | xargs clang-format -i

check-format:
	@git ls-files '*.cpp' '*.hpp' | xargs clang-format --dry-run --Werror

clean:
	rm -rf $(BUILD_DIR)
