// The pool against fake workers speaking BitNet's 2024 llama-server dialect
// (fake-llama-server --bitnet-dialect): what a real fork cannot be made to show on demand.
#include <stdlib.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "test/support/pool_fixture.hpp"

using namespace llama_pool::test;
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

int lines_with(const std::string& path, const std::string& needle) {
    std::ifstream in(path);
    std::string line;
    int n = 0;
    while (std::getline(in, line)) {
        n += line.find(needle) != std::string::npos ? 1 : 0;
    }
    return n;
}

}  // namespace

TEST_CASE("BitNet dialect: slots are read from \"state\" and --slots is always passed",
          "[bitnet-dialect]") {
    PoolProcess pool(fake_pool_args(2, {"--parallel", "2"}, {"--bitnet-dialect"}));
    REQUIRE(pool.wait_ready(2, 20s));
    auto c = pool.client();
    const auto slots = c.Get("/slots");
    REQUIRE(slots);
    CHECK(slots->status == 200);  // the fake serves /slots only with --slots, like the fork
    const auto sj = json::parse(slots->body);
    CHECK(sj.size() == 4);
    CHECK(sj[0]["state"] == 0);
    const auto idle = c.Get("/slots?fail_on_no_slot=1");
    REQUIRE(idle);
    CHECK(idle->status == 200);
}

TEST_CASE("a worker whose /slots is not 200 is named, not dropped", "[bitnet-dialect]") {
    PoolProcess pool(fake_pool_args(1, {"--parallel", "2"}, {"--refuse-slots"}));
    REQUIRE(pool.wait_ready(1, 20s));
    auto c = pool.client();
    const auto slots = c.Get("/slots");
    REQUIRE(slots);
    CHECK(slots->status == 502);
    const auto id = pool.status()["workers"][0]["id"].get<std::string>();
    CHECK(slots->get_header_value("X-Llama-Pool-Unreported") == id + " (status 501)");
    CHECK(slots->body.find(id + " (status 501)") != std::string::npos);
}

TEST_CASE("BitNet dialect: a client mistake's 500 is passed on once, no second opinion",
          "[bitnet-dialect]") {
    const TempDir dir;
    const auto log = dir.file("requests.jsonl");
    PoolProcess pool(
        fake_pool_args(2, {"--parallel", "2"}, {"--bitnet-dialect", "--log-requests", log}));
    REQUIRE(pool.wait_ready(2, 20s));
    auto c = pool.client();
    const auto r = c.Post("/completion", R"({"n_predict":4})", "application/json");
    REQUIRE(r);
    CHECK(r->status == 500);
    CHECK(r->body.find("must be a string, an array of token ids") != std::string::npos);
    const auto chat = c.Post("/v1/chat/completions", R"({"max_tokens":4})", "application/json");
    REQUIRE(chat);
    CHECK(chat->status == 500);
    CHECK(chat->body.find("key 'messages' not found") != std::string::npos);
    CHECK(lines_with(log, "/v1/chat/completions") == 1);  // one worker asked, once
    const auto metrics = c.Get("/metrics");
    REQUIRE(metrics);
    CHECK(metric_value(metrics->body, "llama_pool_second_opinions_total{result=\"skipped\"}") == 2);
    CHECK(metrics->body.find("outcome=\"status_5xx_retried\"") == std::string::npos);
    // Not the workers' fault: both stay in rotation.
    CHECK(pool.status()["totals"]["available"] == 2);
}

TEST_CASE("a worker 500 with no other worker to ask gets its own 500 back at once",
          "[bitnet-dialect]") {
    // One worker: a second opinion can never start. The first 500 goes to the client as it
    // was, instead of being asked of the same worker again or waiting out the queue timeout.
    PoolProcess pool(fake_pool_args(1, {"--parallel", "2", "--queue-timeout", "30"},
                                    {"--fail-status", "500", "--fail-after", "1"}));
    REQUIRE(pool.wait_ready(1, 20s));
    auto c = pool.client();
    const auto started = std::chrono::steady_clock::now();
    const auto r = c.Post("/completion", R"({"prompt":"x","n_predict":2})", "application/json");
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::steady_clock::now() - started)
                        .count();
    REQUIRE(r);
    CHECK(r->status == 500);
    CHECK(r->body.find("injected failure") != std::string::npos);
    std::printf("measured: a worker 500 with no other worker free reached the client in %lld ms\n",
                static_cast<long long>(ms));
    const auto metrics = c.Get("/metrics");
    REQUIRE(metrics);
    CHECK(metric_value(metrics->body,
                       "llama_pool_second_opinions_total{result=\"no_worker_free\"}") == 1);
}

TEST_CASE("a worker 500 while the other worker is busy does not wait for its generation",
          "[bitnet-dialect]") {
    // Measured on BitNet's fork before the bound: 22 s, the length of the generation the
    // second opinion queued behind. Now the first 500 comes back as it was.
    const TempDir dir;
    const auto faults = dir.file("faults");
    std::ofstream(faults) << "";
    PoolProcess pool(fake_pool_args(2, {"--parallel", "1"},
                                    {"--tokens-per-second", "20", "--fault-file", faults}));
    REQUIRE(pool.wait_ready(2, 20s));
    std::atomic<bool> stop{false};
    std::thread holder([&] {
        auto c = pool.client(120s);
        httplib::Request req;
        req.method = "POST";
        req.path = "/completion";
        req.body = R"({"prompt":"x","n_predict":2000,"stream":true})";
        req.set_header("Content-Type", "application/json");
        req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) {
            return !stop.load();
        };
        httplib::Response res;
        httplib::Error err;
        c.send(req, res, err);
    });
    // The idle worker is told to fail every completion with a 500 of its own.
    json idle;
    REQUIRE(wait_until(
        [&] {
            const auto s = pool.status();
            for (const auto& w : s["workers"]) {
                if (w["inflight"] == 1) {
                    for (const auto& other : s["workers"]) {
                        if (other["id"] != w["id"]) {
                            idle = other;
                        }
                    }
                    return true;
                }
            }
            return false;
        },
        20s));
    std::ofstream(faults) << idle["port"].get<int>() << " fail 500\n";
    const auto started = std::chrono::steady_clock::now();
    const auto r =
        pool.client().Post("/completion", R"({"prompt":"y","n_predict":2})", "application/json");
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::steady_clock::now() - started)
                        .count();
    stop = true;
    holder.join();
    REQUIRE(r);
    CHECK(r->status == 500);
    CHECK(r->body.find("injected failure") != std::string::npos);
    std::printf("measured: a worker 500 beside a busy worker reached the client in %lld ms\n",
                static_cast<long long>(ms));
    const auto metrics = pool.client().Get("/metrics");
    REQUIRE(metrics);
    CHECK(metric_value(metrics->body,
                       "llama_pool_second_opinions_total{result=\"no_worker_free\"}") == 1);
}
