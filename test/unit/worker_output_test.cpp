#include "supervisor/worker_output.hpp"

#include <catch2/catch.hpp>

using namespace llama_pool;

TEST_CASE("worker lines are classified for the pool's log", "[worker-output]") {
    // BitNet's fork logs every request, health probes included; current llama-server with a
    // prefix. Routine at any time, start-up included.
    CHECK(classify_worker_line("request: GET /health 127.0.0.1 200", false) ==
          OutputLineKind::other);
    CHECK(classify_worker_line("request: GET /health 127.0.0.1 503", true) ==
          OutputLineKind::other);
    CHECK(classify_worker_line("srv  log_server_r: request: POST /completion 127.0.0.1 200",
                               false) == OutputLineKind::other);
    CHECK(classify_worker_line("main: loading model", true) == OutputLineKind::startup);
    CHECK(classify_worker_line("slot print_timing: id  0 | task 1 |", false) ==
          OutputLineKind::other);
    CHECK(classify_worker_line("got exception: {\"code\":500,\"message\":\"x\"}", false) ==
          OutputLineKind::error);
    CHECK(classify_worker_line("llama_model_load: error loading model: bad magic", true) ==
          OutputLineKind::error);
    CHECK(classify_worker_line("slot update_slots: id  0 | task 1 | input truncated, n_ctx = 256",
                               false) == OutputLineKind::warning);
    CHECK(classify_worker_line("W warning: no usable GPU found", true) == OutputLineKind::warning);
    // Current llama-server's routine end of every request is not a warning.
    CHECK(classify_worker_line("0.00.223.417 I slot      release: id  1 | task 0 | stop "
                               "processing: n_tokens = 2, truncated = 0",
                               false) == OutputLineKind::other);
    CHECK(log_level_for(OutputLineKind::startup) == LogLevel::info);
    CHECK(log_level_for(OutputLineKind::warning) == LogLevel::warn);
    CHECK(log_level_for(OutputLineKind::error) == LogLevel::error);
    CHECK(log_level_for(OutputLineKind::other) == LogLevel::debug);
}

TEST_CASE("the output ring keeps the first lines of a start and the latest", "[worker-output]") {
    OutputRing ring(3, 4);
    for (int i = 1; i <= 10; ++i) {
        ring.add("line " + std::to_string(i));
    }
    const auto lines = ring.lines();
    REQUIRE(lines.size() == 8);
    CHECK(lines[0] == "line 1");
    CHECK(lines[2] == "line 3");
    CHECK(lines[3] == "[llama-pool: 3 lines left out]");
    CHECK(lines[4] == "line 7");
    CHECK(lines[7] == "line 10");

    SECTION("nothing left out, no marker") {
        OutputRing small(3, 4);
        small.add("a");
        small.add("b");
        CHECK(small.lines() == std::vector<std::string>{"a", "b"});
    }
    SECTION("a new start forgets the last one") {
        ring.clear();
        ring.add("fresh");
        CHECK(ring.lines() == std::vector<std::string>{"fresh"});
    }
}

TEST_CASE("a crash report quotes the worker's lines, not its request log", "[worker-output]") {
    OutputRing ring(2, 5);
    ring.add("main: loading model");
    ring.add("main: model loaded");
    ring.add("request: GET /health 127.0.0.1 200");
    ring.add("GGML_ASSERT(n_tokens > 0) failed");
    ring.add("request: GET /health 127.0.0.1 200");
    ring.add("request: GET /health 127.0.0.1 200");
    const auto report = ring.report_tail(3);
    CHECK(report == std::vector<std::string>{"main: loading model", "main: model loaded",
                                             "GGML_ASSERT(n_tokens > 0) failed"});
}
