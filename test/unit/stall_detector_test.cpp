#include "supervisor/stall_detector.hpp"

#include <catch2/catch.hpp>

#include "supervisor/probes.hpp"

using namespace llama_pool;
using namespace std::chrono_literals;

TEST_CASE("a worker with nothing in flight is never stalled", "[stall]") {
    StallDetector d(10s);
    const TimePoint t0{};
    CHECK(d.observe(t0, 0, 5) == StallVerdict::idle);
    CHECK(d.observe(t0 + 1h, 0, 5) == StallVerdict::idle);
}

TEST_CASE("in flight and no progress for the timeout is a stall", "[stall]") {
    StallDetector d(10s);
    const TimePoint t0{};
    CHECK(d.observe(t0, 2, 100) == StallVerdict::progressing);  // starts the clock
    CHECK(d.observe(t0 + 5s, 2, 100) == StallVerdict::quiet);
    CHECK(d.quiet_for(t0 + 5s) == 5s);
    CHECK(d.observe(t0 + 9s, 2, 100) == StallVerdict::quiet);
    CHECK(d.observe(t0 + 10s, 2, 100) == StallVerdict::stalled);
}

TEST_CASE("any progress restarts the clock", "[stall]") {
    StallDetector d(10s);
    const TimePoint t0{};
    d.observe(t0, 1, 1);
    CHECK(d.observe(t0 + 9s, 1, 1) == StallVerdict::quiet);
    CHECK(d.observe(t0 + 9500ms, 1, 2) == StallVerdict::progressing);
    CHECK(d.observe(t0 + 19s, 1, 2) == StallVerdict::quiet);
    CHECK(d.observe(t0 + 19500ms, 1, 2) == StallVerdict::stalled);
}

TEST_CASE("going idle forgets the quiet time", "[stall]") {
    StallDetector d(10s);
    const TimePoint t0{};
    d.observe(t0, 1, 1);
    d.observe(t0 + 9s, 1, 1);
    CHECK(d.observe(t0 + 9s, 0, 1) == StallVerdict::idle);
    CHECK(d.observe(t0 + 12s, 1, 1) == StallVerdict::progressing);
    CHECK(d.observe(t0 + 21s, 1, 1) == StallVerdict::quiet);
}

TEST_CASE("a zero timeout turns the watchdog off", "[stall]") {
    StallDetector d(Duration::zero());
    const TimePoint t0{};
    d.observe(t0, 1, 1);
    CHECK(d.observe(t0 + 24h, 1, 1) == StallVerdict::quiet);
}

TEST_CASE("the watchdog reads decode counters and relayed bytes together", "[stall]") {
    StallDetector d(10s);
    const TimePoint t0{};
    const WorkerProgress busy{100, true, 2};
    CHECK(d.look(t0, 2, 0, busy) == StallVerdict::progressing);
    // A non-streamed generation: no bytes relayed, but the decode counter moves.
    CHECK(d.look(t0 + 8s, 2, 0, WorkerProgress{150, true, 2}) == StallVerdict::progressing);
    // /metrics no longer answers (a stuck main loop) and no bytes come: the last counters
    // stand, and the clock runs out.
    CHECK(d.look(t0 + 12s, 2, 0, std::nullopt) == StallVerdict::quiet);
    CHECK(d.look(t0 + 18s, 2, 0, std::nullopt) == StallVerdict::stalled);
}

TEST_CASE("relayed bytes alone count as progress (an upstream without llama.cpp metrics)",
          "[stall]") {
    StallDetector d(10s);
    const TimePoint t0{};
    CHECK(d.look(t0, 1, 10, std::nullopt) == StallVerdict::progressing);
    CHECK(d.look(t0 + 9s, 1, 20, std::nullopt) == StallVerdict::progressing);
    CHECK(d.look(t0 + 18s, 1, 30, std::nullopt) == StallVerdict::progressing);
    CHECK(d.look(t0 + 28s, 1, 30, std::nullopt) == StallVerdict::stalled);
}

TEST_CASE("a worker that generates for nobody waits on slow clients, not stuck", "[stall]") {
    StallDetector d(10s);
    const TimePoint t0{};
    const WorkerProgress done{500, true, 0};
    d.look(t0, 1, 0, done);
    CHECK(d.look(t0 + 30s, 1, 0, done) == StallVerdict::progressing);
    CHECK(d.look(t0 + 60s, 1, 0, done) == StallVerdict::progressing);
}

TEST_CASE("decode_progress sums llama.cpp's work counters", "[stall]") {
    const auto p = decode_progress(
        "# HELP llamacpp:n_decode_total Total number of llama_decode() calls\n"
        "# TYPE llamacpp:n_decode_total counter\n"
        "llamacpp:n_decode_total 40\n"
        "llamacpp:prompt_tokens_total 1000\n"
        "llamacpp:tokens_predicted_total 7\n"
        "llamacpp:requests_processing 2\n"
        "llamacpp:n_decode_total_extra 99\n");
    CHECK(p.has_work);
    CHECK(p.work == 1047);
    CHECK(p.processing == 2);
    const auto bitnet = decode_progress("llamacpp:n_tokens_predicted_total 12\n");
    CHECK(bitnet.work == 12);
    CHECK(bitnet.processing == -1);
    const auto none = decode_progress("process_cpu_seconds_total 3\ngarbage\n");
    CHECK_FALSE(none.has_work);
}
