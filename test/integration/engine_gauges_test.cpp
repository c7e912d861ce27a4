// The three gauges the Gateway API Inference Extension's endpoint picker (llm-d's router)
// and autoscalers read from /metrics, under load on a live pool of fake workers.
#include <atomic>
#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "test/support/pool_fixture.hpp"

using namespace llama_pool::test;
using namespace std::chrono_literals;

TEST_CASE("a one-worker two-slot pool given 4 held requests shows 2 running and 2 waiting",
          "[integration]") {
    TempDir dir;
    const auto faults = dir.file("faults");
    std::ofstream(faults) << "";
    PoolProcess pool(
        fake_pool_args(1, {"--parallel", "2", "--queue-max", "8"}, {"--fault-file", faults}));
    REQUIRE(pool.wait_ready(1, 20s));
    auto c = pool.client(10s);
    const auto gauges = [&] {
        const auto m = c.Get("/metrics");
        const std::string text = m ? m->body : "";
        return std::vector<double>{metric_value(text, "llama_pool_requests_running "),
                                   metric_value(text, "llama_pool_requests_waiting "),
                                   metric_value(text, "llama_pool_kv_cache_usage_ratio ")};
    };
    // Idle: every series is there, at 0.
    CHECK(gauges() == std::vector<double>{0, 0, 0});

    // The worker holds every completion until released: two take its two slots, two wait in
    // the pool's queue.
    std::ofstream(faults) << pool.status()["workers"][0]["port"].get<int>() << " hold\n";
    std::vector<std::thread> clients;
    std::atomic<int> ok{0};
    for (int i = 0; i < 4; ++i) {
        clients.emplace_back([&] {
            const auto r = pool.client(60s).Post("/completion", R"({"prompt":"x","max_tokens":4})",
                                                 "application/json");
            if (r && r->status == 200) {
                ++ok;
            }
        });
    }
    std::vector<double> seen;
    const bool loaded = wait_until(
        [&] {
            seen = gauges();
            return seen[0] == 2 && seen[1] == 2;
        },
        20s);
    std::ofstream(faults) << "";  // release the held ones
    for (auto& t : clients) {
        t.join();
    }
    INFO("running, waiting, kv ratio: " << seen[0] << ", " << seen[1] << ", " << seen[2]);
    REQUIRE(loaded);
    // The fake worker reports no KV use: both slots busy is the whole context reserved.
    CHECK(seen[2] == 1);
    CHECK(ok == 4);
    CHECK(wait_until([&] { return gauges() == std::vector<double>{0, 0, 0}; }, 10s));
}

TEST_CASE("with groups the engine gauges have a pool-wide series and one per group",
          "[integration][groups]") {
    TempDir dir;
    nlohmann::json doc;
    doc["groups"] = nlohmann::json::array();
    for (const auto* name : {"chat", "embed"}) {
        const auto model = dir.file(std::string(name) + ".gguf");
        std::ofstream(model) << "gguf";
        doc["groups"].push_back({{"name", name}, {"model", model}, {"workers", 1}});
    }
    const auto config = dir.file("pool.json");
    std::ofstream(config) << doc.dump(2);
    PoolProcess pool(fake_pool_args(1, {"--config", config}));
    REQUIRE(pool.wait_ready(2, 20s));
    const auto m = pool.client(10s).Get("/metrics");
    REQUIRE(m);
    const auto& text = m->body;
    for (const auto* name : {"llama_pool_requests_waiting", "llama_pool_requests_running",
                             "llama_pool_kv_cache_usage_ratio"}) {
        INFO(name);
        const std::string n(name);
        CHECK(metric_value(text, n + " ") == 0);
        CHECK(metric_value(text, n + "{group=\"chat\"} ") == 0);
        CHECK(metric_value(text, n + "{group=\"embed\"} ") == 0);
    }
    // A group's own view keeps the pool-wide series and drops the other group's.
    const auto embed = pool.client(10s).Get("/metrics?model=embed");
    REQUIRE(embed);
    CHECK(metric_value(embed->body, "llama_pool_requests_waiting ") == 0);
    CHECK(metric_value(embed->body, "llama_pool_requests_waiting{group=\"embed\"} ") == 0);
    CHECK(metric_value(embed->body, "llama_pool_requests_waiting{group=\"chat\"} ") == -1);
}
