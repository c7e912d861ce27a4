// Admin endpoints and configuration reload, with fake workers.
#include <signal.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>

#include "test/support/pool_fixture.hpp"

using namespace llama_pool::test;
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

std::string write_config(const std::string& path, int workers) {
    std::ofstream(path) << R"({
  // written by the test
  "workers": {"count": )"
                        << workers << R"(, "health_interval": 0.2, "restart_backoff_base": 0.05,
              "llama_server": ")"
                        << FAKE_WORKER_BINARY << R"(", "model": ")" << dummy_model_path() << R"("}
})";
    return path;
}

std::set<std::string> worker_ids(const json& status) {
    std::set<std::string> ids;
    for (const auto& w : status.value("workers", json::array())) {
        ids.insert(w["id"].get<std::string>());
    }
    return ids;
}

}  // namespace

TEST_CASE("the admin key guards /pool/* and nothing else", "[integration]") {
    TempDir dir;
    const auto config = write_config(dir.file("pool.json"), 1);
    PoolProcess pool({"--config", config, "--admin-key", "s3cret"});
    REQUIRE(pool.wait_listening(10s));
    auto c = pool.client();
    const auto denied = c.Get("/pool/status");
    REQUIRE(denied);
    CHECK(denied->status == 401);
    CHECK(json::parse(denied->body)["error"]["type"] == "authentication_error");
    CHECK(c.Get("/pool/status", {{"Authorization", "Bearer wrong"}})->status == 401);
    CHECK(c.Get("/pool/status", {{"Authorization", "Bearer s3cret"}})->status == 200);
    CHECK(c.Get("/pool/status", {{"X-Api-Key", "s3cret"}})->status == 200);
    CHECK(c.Post("/pool/restart", "", "application/json")->status == 401);
    REQUIRE(wait_until([&] { return c.Get("/health")->status == 200; }, 20s));
    // The key never shows in the effective config.
    TestProcess check(LLAMA_POOL_BINARY,
                      {"--config", config, "--admin-key", "s3cret", "--check-config"});
    REQUIRE(check.wait_exit(10s) == 0);
    CHECK(check.output().find("s3cret") == std::string::npos);
    CHECK(check.output().find("<redacted>") != std::string::npos);
}

TEST_CASE("SIGHUP applies a new worker count by rolling replacement", "[integration]") {
    TempDir dir;
    const auto path = write_config(dir.file("pool.json"), 1);
    PoolProcess pool({"--config", path});
    REQUIRE(pool.wait_ready(1, 20s));
    const auto before = worker_ids(pool.status());
    write_config(path, 2);
    pool.process().signal(SIGHUP);
    REQUIRE(wait_until(
        [&] {
            const auto s = pool.status();
            const auto ids = worker_ids(s);
            return s["totals"]["ready"] == 2 && ids.size() == 2 && !ids.count(*before.begin());
        },
        30s));
    CHECK(pool.process().output().find("event=config_reloaded") != std::string::npos);
}

TEST_CASE("SIGHUP with an invalid config leaves the running pool untouched", "[integration]") {
    TempDir dir;
    const auto path = write_config(dir.file("pool.json"), 1);
    PoolProcess pool({"--config", path});
    REQUIRE(pool.wait_ready(1, 20s));
    const auto before = pool.status();
    std::ofstream(path) << R"({"workers": {"count": "many"}})";
    pool.process().signal(SIGHUP);
    REQUIRE(wait_until(
        [&] {
            return pool.process().output().find("event=config_reload_rejected") !=
                   std::string::npos;
        },
        10s));
    CHECK(pool.process().output().find(
              "key \\\"workers.count\\\": \\\"many\\\" is not an integer") != std::string::npos);
    CHECK(worker_ids(pool.status()) == worker_ids(before));
    CHECK(pool.client()
              .Post("/completion", R"({"prompt":"x","max_tokens":1})", "application/json")
              ->status == 200);
}

TEST_CASE("a second rolling restart while one runs is refused with 409", "[integration]") {
    TempDir dir;
    const auto path = dir.file("pool.json");
    // A slow-loading replacement keeps the first rollout busy long enough to collide with.
    std::ofstream(path) << R"({"workers": {"count": 2, "health_interval": 0.2, "llama_server": ")"
                        << FAKE_WORKER_BINARY << R"(", "model": ")" << dummy_model_path()
                        << R"(", "args": ["--load-delay-ms", "800"]}})";
    PoolProcess pool({"--config", path});
    REQUIRE(pool.wait_ready(2, 20s));
    auto c = pool.client();
    CHECK(c.Post("/pool/restart", "", "application/json")->status == 202);
    CHECK(c.Post("/pool/restart", "", "application/json")->status == 409);
    const auto single = c.Post("/pool/workers/nope/restart", "", "application/json");
    CHECK(single->status == 404);
}
