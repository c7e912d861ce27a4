// End-to-end against a REAL llama-server on the demo model.
#include "test/support/real_worker.hpp"

#include <signal.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>

#include "test/support/pool_fixture.hpp"

using namespace llama_pool::test;
using json = nlohmann::json;
using namespace std::chrono_literals;

TEST_CASE("a pool of 2 real workers serves a 16-token completion and stops cleanly", "[e2e]") {
    PoolProcess pool(real_pool_args(2));
    REQUIRE(pool.wait_ready(2, 120s));
    auto c = pool.client();
    const auto health = c.Get("/health");
    REQUIRE(health);
    CHECK(health->status == 200);
    CHECK(json::parse(health->body)["status"] == "ok");

    const auto r = c.Post("/completion", R"({"prompt":"Hello","max_tokens":16,"ignore_eos":true})",
                          "application/json");
    REQUIRE(r);
    REQUIRE(r->status == 200);
    const auto body = json::parse(r->body);
    CHECK_FALSE(body["content"].get<std::string>().empty());
    CHECK(body["tokens_predicted"] == 16);

    const auto pids = pool.worker_pids();
    REQUIRE(pids.size() == 2);
    for (const auto pid : pids) {
        CHECK(process_cmdline(pid).find("llama-server") != std::string::npos);
    }
    pool.process().signal(SIGTERM);
    CHECK(pool.process().wait_exit(30s) == 0);
    for (const auto pid : pids) {
        CHECK_FALSE(process_alive(pid));
    }
}

TEST_CASE("real workers' llama.cpp metrics are re-exported per worker and pass promtool", "[e2e]") {
    PoolProcess pool(real_pool_args(2));
    REQUIRE(pool.wait_ready(2, 120s));
    auto c = pool.client();
    for (int i = 0; i < 4; ++i) {
        REQUIRE(c.Post("/completion", R"({"prompt":"Hello","n_predict":8})", "application/json")
                    ->status == 200);
    }
    const auto text = c.Get("/metrics")->body;
    for (const auto* name : {"llamacpp_prompt_tokens_total{worker=\"0\"}",
                             "llamacpp_tokens_predicted_total{worker=\"1\"}",
                             "llamacpp_requests_processing{worker=\"0\"}",
                             "llamacpp_requests_deferred{worker=\"1\"}"}) {
        INFO(name);
        CHECK(text.find(name) != std::string::npos);
    }
    CHECK(text.find("llama_pool_tokens_predicted_total{worker=") != std::string::npos);
    TempDir dir;
    const auto path = dir.file("metrics.txt");
    std::ofstream(path) << text;
    TestProcess promtool("/bin/sh", {"-c", "promtool check metrics < " + path});
    const auto rc = promtool.wait_exit(30s);
    INFO(promtool.output());
    CHECK(rc == 0);
}
