// The pool as a process, with fake workers launched by its own supervisor.
#include <signal.h>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "common/socket.hpp"
#include "test/support/pool_fixture.hpp"

using namespace llama_pool::test;
using json = nlohmann::json;
using namespace std::chrono_literals;

TEST_CASE("a pool of fake workers serves /health and /completion", "[integration]") {
    PoolProcess pool(fake_pool_args(2));
    REQUIRE(pool.wait_ready(2, 20s));
    auto c = pool.client();
    const auto health = c.Get("/health");
    REQUIRE(health);
    CHECK(health->status == 200);
    CHECK(json::parse(health->body)["status"] == "ok");
    CHECK(json::parse(health->body)["workers_ready"] == 2);

    const auto r =
        c.Post("/completion", R"({"prompt":"Hello","max_tokens":4})", "application/json");
    REQUIRE(r);
    CHECK(r->status == 200);
    const auto body = json::parse(r->body);
    CHECK(body["tokens_predicted"] == 4);
    CHECK(body["content"] == " tok0 tok1 tok2 tok3");
    CHECK(r->has_header("X-Request-Id"));

    const auto root = c.Get("/");
    REQUIRE(root);
    CHECK(root->status == 200);
    CHECK(root->get_header_value("Content-Type").find("text/html") == 0);
}

TEST_CASE("an incoming X-Request-Id is echoed back", "[integration]") {
    PoolProcess pool(fake_pool_args(1));
    REQUIRE(pool.wait_ready(1, 20s));
    auto c = pool.client();
    const auto r = c.Post("/completion", {{"X-Request-Id", "n8n-abc-1"}},
                          R"({"prompt":"x","max_tokens":1})", "application/json");
    REQUIRE(r);
    CHECK(r->get_header_value("X-Request-Id") == "n8n-abc-1");
}

TEST_CASE("a stream is relayed event by event and ends cleanly", "[integration]") {
    PoolProcess pool(fake_pool_args(1));
    REQUIRE(pool.wait_ready(1, 20s));
    auto c = pool.client();
    std::vector<std::string> pieces;
    std::string all;
    const auto res =
        stream_post(c, "/v1/chat/completions",
                    R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":5,"stream":true})",
                    [&](std::string_view piece) {
                        pieces.emplace_back(piece);
                        all.append(piece);
                    });
    const auto* r = &res;
    CHECK(r->status == 200);
    CHECK(r->get_header_value("Content-Type") == "text/event-stream");
    CHECK(r->get_header_value("X-Accel-Buffering") == "no");
    CHECK(all.size() > 0);
    CHECK(all.rfind("data: [DONE]\n\n") == all.size() - 14);
    // Events arrive as they are produced, not as one buffered block.
    CHECK(pieces.size() >= 5);
}

TEST_CASE("requests sent while workers load wait and then succeed", "[integration]") {
    PoolProcess pool(fake_pool_args(1, {}, {"--load-delay-ms", "1500"}));
    REQUIRE(pool.wait_listening(10s));
    CHECK(pool.client().Get("/health")->status == 503);
    auto c = pool.client();
    // No worker is ready yet: the request waits in the pool's queue instead of failing.
    const auto r =
        c.Post("/completion", R"({"prompt":"early","max_tokens":2})", "application/json");
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(json::parse(r->body)["tokens_predicted"] == 2);
}

TEST_CASE("a killed worker is restarted and requests keep succeeding", "[integration]") {
    PoolProcess pool(fake_pool_args(2));
    REQUIRE(pool.wait_ready(2, 20s));
    const auto pids = pool.worker_pids();
    REQUIRE(pids.size() == 2);
    ::kill(pids[0], SIGKILL);
    auto c = pool.client();
    for (int i = 0; i < 20; ++i) {
        const auto r =
            c.Post("/completion", R"({"prompt":"x","max_tokens":1})", "application/json");
        REQUIRE(r);
        CHECK(r->status == 200);
    }
    REQUIRE(wait_until(
        [&] {
            const auto s = pool.status();
            return s["totals"]["ready"] == 2 && s["workers"][0]["restarts"].get<int>() >= 1;
        },
        20s));
    const auto s = pool.status();
    CHECK(s["workers"][0]["pid"] != pids[0]);
    CHECK(s["workers"][0]["last_exit_reason"].get<std::string>().find("signal 9") !=
          std::string::npos);
}

TEST_CASE(
    "a worker that fails at start is reported with its exit code and output, then fails for good",
    "[integration]") {
    auto args = fake_pool_args(1, {}, {"--exit-at-start"});
    args.insert(args.end(), {"--crash-loop-restarts", "3"});
    PoolProcess pool(args);
    REQUIRE(wait_until(
        [&] {
            return pool.status().value("workers", json::array()).size() == 1 &&
                   pool.status()["workers"][0]["state"] == "failed";
        },
        20s));
    const auto w = pool.status()["workers"][0];
    CHECK(w["last_exit_reason"].get<std::string>().find("exited with code 1") != std::string::npos);
    CHECK(w["last_output"].dump().find("told to fail at start") != std::string::npos);
    CHECK(w["restarts"].get<int>() == 2);
    auto c = pool.client();
    const auto health = c.Get("/health");
    REQUIRE(health);
    CHECK(health->status == 503);
    CHECK(json::parse(health->body)["status"] != "ok");
    const auto log = c.Get("/pool/workers/0/log");
    REQUIRE(log);
    CHECK(log->body.find("told to fail at start") != std::string::npos);
}

TEST_CASE("SIGTERM stops the pool with exit 0 and no worker left", "[integration]") {
    PoolProcess pool(fake_pool_args(2));
    REQUIRE(pool.wait_ready(2, 20s));
    const auto pids = pool.worker_pids();
    REQUIRE(pids.size() == 2);
    pool.process().signal(SIGTERM);
    CHECK(pool.process().wait_exit(20s) == 0);
    for (const auto pid : pids) {
        CHECK_FALSE(process_alive(pid));
    }
}

TEST_CASE("SIGKILL of the pool leaves no worker behind", "[integration]") {
    PoolProcess pool(fake_pool_args(2));
    REQUIRE(pool.wait_ready(2, 20s));
    const auto pids = pool.worker_pids();
    pool.process().signal(SIGKILL);
    pool.process().wait_exit(5s);
    for (const auto pid : pids) {
        CHECK(wait_until([&] { return !process_alive(pid); }, 5s));
    }
}

TEST_CASE("unknown paths get llama-server's 404 shape from the worker", "[integration]") {
    PoolProcess pool(fake_pool_args(1));
    REQUIRE(pool.wait_ready(1, 20s));
    auto c = pool.client();
    const auto r = c.Get("/no/such/endpoint");
    REQUIRE(r);
    CHECK(r->status == 404);
    CHECK(json::parse(r->body)["error"]["type"] == "not_found_error");
}

TEST_CASE("check-config prints the effective config and bad config exits non-zero",
          "[integration]") {
    TestProcess good(LLAMA_POOL_BINARY, {"--workers", "0", "--port", "9999", "--check-config"});
    REQUIRE(good.wait_exit(10s) == 0);
    const auto j = json::parse(good.output());
    CHECK(j["listen"]["port"] == 9999);
    TestProcess bad(LLAMA_POOL_BINARY, {"--workers", "-3"});
    CHECK(bad.wait_exit(10s) == 2);
    CHECK(bad.output().find("key \"workers.count\": -3 is out of range") != std::string::npos);
}

TEST_CASE("a pool whose port is taken exits 1 and says which address", "[integration]") {
    std::string error;
    auto holder = llama_pool::listen_tcp("127.0.0.1", 0, 1, error);
    REQUIRE(holder.valid());
    const auto port = llama_pool::local_port(holder.get());
    TestProcess pool(LLAMA_POOL_BINARY, {"--port", std::to_string(port), "--workers", "0"});
    CHECK(pool.wait_exit(10s) == 1);
    CHECK(pool.output().find("bind 127.0.0.1:" + std::to_string(port) +
                             ": Address already in use") != std::string::npos);
}

TEST_CASE("a worker that does not load within the start-up timeout is restarted", "[integration]") {
    // The fake answers 503 "Loading model" for 5 s; the pool gives it 1 s.
    PoolProcess pool(fake_pool_args(1, {"--startup-timeout", "1"}, {"--load-delay-ms", "5000"}));
    REQUIRE(wait_until(
        [&] {
            const auto s = pool.status();
            return !s.value("workers", json::array()).empty() &&
                   s["workers"][0]["restarts"].get<int>() >= 1;
        },
        20s));
    const auto w = pool.status()["workers"][0];
    CHECK(w["last_exit_reason"].get<std::string>().find("start-up timeout") != std::string::npos);
    CHECK(pool.client().Get("/health")->status == 503);
}
