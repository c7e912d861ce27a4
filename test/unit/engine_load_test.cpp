#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "proxy/pool_metrics.hpp"

// The three gauges the Gateway API Inference Extension's endpoint picker and autoscalers
// read: how they are derived from what one scrape saw.

using namespace llama_pool;

TEST_CASE("running adds the workers' in-flight requests, waiting is the queue", "[metrics]") {
    const auto load = engine_load({{2, 2, std::nullopt}, {4, 1, std::nullopt}}, 3);
    CHECK(load.running == 3);
    CHECK(load.waiting == 3);
}

TEST_CASE("kv ratio without reports is the share of busy slots, weighted by slots", "[metrics]") {
    // 2 of 2 slots busy on one worker, 1 of 6 on the other: 3 of 8.
    CHECK(engine_load({{2, 2, std::nullopt}, {6, 1, std::nullopt}}, 0).kv_cache_usage_ratio ==
          Approx(3.0 / 8));
    CHECK(engine_load({}, 5).kv_cache_usage_ratio == 0);
}

TEST_CASE("kv ratio prefers what a worker reports, and skips workers not serving", "[metrics]") {
    // Reported 0.5 on 2 slots, 0.25 on 2 slots; a stopped worker (0 slots) still counts its
    // in-flight requests as running but holds no share of the context.
    const auto load = engine_load({{2, 0, 0.5}, {2, 2, 0.25}, {0, 1, std::nullopt}}, 0);
    CHECK(load.kv_cache_usage_ratio == Approx(0.375));
    CHECK(load.running == 3);
}

TEST_CASE("a worker's own kv_cache_usage_ratio is read from its exposition", "[metrics]") {
    CHECK_FALSE(reported_kv_cache_ratio("llamacpp:requests_processing 1\n").has_value());
    CHECK(reported_kv_cache_ratio("# TYPE llamacpp:kv_cache_usage_ratio gauge\n"
                                  "llamacpp:kv_cache_usage_ratio 0.125\n")
              .value() == 0.125);
    // Out of range is not believed.
    CHECK_FALSE(reported_kv_cache_ratio("llamacpp:kv_cache_usage_ratio 7\n").has_value());
}
