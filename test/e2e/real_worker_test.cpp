// End-to-end against a REAL llama-server on the demo model.
#include "test/support/real_worker.hpp"

#include <signal.h>

#include <catch2/catch.hpp>
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
