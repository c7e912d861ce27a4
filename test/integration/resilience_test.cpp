// Routing and resilience through the pool, with fake workers: ejection, retries, the
// bounded queue, deadlines, auth and rate limits.
#include <signal.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/socket.hpp"
#include "test/support/pool_fixture.hpp"

using namespace llama_pool::test;
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

std::vector<std::string> pool_args(int workers, std::vector<std::string> extra,
                                   std::vector<std::string> worker_args = {}) {
    return fake_pool_args(workers, std::move(extra), std::move(worker_args));
}

int post_status(PoolProcess& pool, const std::string& body = R"({"prompt":"x","max_tokens":2})",
                const httplib::Headers& headers = {}) {
    const auto r = pool.client(30s).Post("/completion", headers, body, "application/json");
    return r ? r->status : 0;
}

}  // namespace

TEST_CASE("a worker answering 500 is ejected and traffic moves to the healthy one",
          "[integration]") {
    TempDir dir;
    const auto faults = dir.file("faults");
    std::ofstream(faults) << "";
    PoolProcess pool(pool_args(2, {"--breaker-failures", "3", "--breaker-ejection", "60"},
                               {"--fault-file", faults}));
    REQUIRE(pool.wait_ready(2, 20s));
    const auto bad = pool.status()["workers"][0];
    std::ofstream(faults) << bad["port"].get<int>() << " fail 500\n";
    int failures = 0;
    for (int i = 0; i < 40; ++i) {
        failures += post_status(pool) == 200 ? 0 : 1;
    }
    // The 500s pass through (they are the worker's answer) until the breaker opens.
    CHECK(failures <= 3);
    for (int i = 0; i < 20; ++i) {
        CHECK(post_status(pool) == 200);
    }
    const auto w = pool.status()["workers"][0];
    CHECK(w["breaker"] == "open");
    CHECK(w["ejections"].get<int>() >= 1);
    std::remove(faults.c_str());
}

TEST_CASE("a worker returning 503 is retried on another worker, invisibly", "[integration]") {
    TempDir dir;
    const auto faults = dir.file("faults");
    std::ofstream(faults) << "";
    PoolProcess pool(pool_args(2, {}, {"--fault-file", faults}));
    REQUIRE(pool.wait_ready(2, 20s));
    std::ofstream(faults) << pool.status()["workers"][0]["port"].get<int>() << " fail 503\n";
    for (int i = 0; i < 20; ++i) {
        CHECK(post_status(pool) == 200);
    }
    std::remove(faults.c_str());
}

TEST_CASE("a worker killed under load costs no non-stream request", "[integration]") {
    PoolProcess pool(pool_args(2, {}, {"--tokens-per-second", "200"}));
    REQUIRE(pool.wait_ready(2, 20s));
    const auto victim = pool.worker_pids().at(0);
    std::atomic<int> ok{0}, failed{0};
    std::atomic<bool> stop{false};
    std::vector<std::thread> clients;
    for (int i = 0; i < 4; ++i) {
        clients.emplace_back([&] {
            while (!stop) {
                (post_status(pool, R"({"prompt":"x","max_tokens":20})") == 200 ? ok : failed)++;
            }
        });
    }
    // CHECK, not REQUIRE: the client threads must be joined whatever happens.
    CHECK(wait_until([&] { return ok >= 10; }, 20s));
    ::kill(victim, SIGKILL);
    const int at_kill = ok;
    CHECK(wait_until([&] { return ok >= at_kill + 30; }, 30s));
    stop = true;
    for (auto& t : clients) {
        t.join();
    }
    INFO(pool.log_lines_with("component=proxy"));
    CHECK(failed == 0);
    CHECK(ok > at_kill);
}

TEST_CASE("a full queue answers 503 at once with a Retry-After", "[integration]") {
    TempDir dir;
    const auto faults = dir.file("faults");
    std::ofstream(faults) << "";
    PoolProcess pool(
        pool_args(1, {"--parallel", "1", "--queue-max", "2"}, {"--fault-file", faults}));
    REQUIRE(pool.wait_ready(1, 20s));
    // The worker holds every completion until released: the first takes its one slot, the
    // next two fill the queue, the last three find it full. Each step is awaited, not slept.
    std::ofstream(faults) << pool.status()["workers"][0]["port"].get<int>() << " hold\n";
    std::vector<std::thread> clients;
    std::vector<std::atomic<int>> statuses(6);  // read while the clients run
    std::vector<std::string> retry_after(6), bodies(6);
    const auto send = [&](int i) {
        clients.emplace_back([&, i] {
            const auto r = pool.client(60s).Post("/completion", R"({"prompt":"x","max_tokens":10})",
                                                 "application/json");
            if (r) {
                retry_after[i] = r->get_header_value("Retry-After");
                bodies[i] = r->body;
                statuses[i] = r->status;  // last: the others are complete when it shows
            } else {
                statuses[i] = -1;
            }
        });
    };
    const auto totals = [&](const char* key) { return pool.status()["totals"][key].get<int>(); };
    send(0);
    const bool in_flight = wait_until([&] { return totals("inflight") == 1; }, 20s);
    send(1);
    send(2);
    const bool queued = wait_until([&] { return totals("queued") == 2; }, 20s);
    for (int i = 3; i < 6; ++i) {
        send(i);
    }
    const bool refused_all =
        wait_until([&] { return statuses[3] != 0 && statuses[4] != 0 && statuses[5] != 0; }, 20s);
    std::ofstream(faults) << "";  // release the held ones
    for (auto& t : clients) {
        t.join();
    }
    REQUIRE(in_flight);
    REQUIRE(queued);
    REQUIRE(refused_all);
    int ok = 0, refused = 0;
    for (int i = 0; i < 6; ++i) {
        if (statuses[i].load() == 200) {
            ++ok;
        } else {
            REQUIRE(statuses[i].load() == 503);
            ++refused;
            const int seconds = std::stoi(retry_after[i]);
            CHECK(seconds >= 1);
            CHECK(seconds <= 60);
            const auto error = json::parse(bodies[i])["error"];
            CHECK(error["type"] == "unavailable_error");
            CHECK(error["source"] == "llama-pool");
        }
    }
    CHECK(ok == 3);
    CHECK(refused == 3);
}

TEST_CASE("a queued client that disconnects leaves the queue at once", "[integration]") {
    PoolProcess pool(pool_args(1, {"--parallel", "1"}, {"--tokens-per-second", "10"}));
    REQUIRE(pool.wait_ready(1, 20s));
    std::thread long_request([&] { post_status(pool, R"({"prompt":"x","max_tokens":20})"); });
    REQUIRE(wait_until([&] { return pool.status()["totals"]["inflight"] == 1; }, 5s));
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    std::string error;
    auto fd = llama_pool::connect_tcp("127.0.0.1", pool.port(), deadline, error);
    const std::string body = R"({"prompt":"x","max_tokens":1})";
    llama_pool::write_all(fd.get(),
                          "POST /completion HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                              std::to_string(body.size()) + "\r\n\r\n" + body,
                          deadline);
    REQUIRE(wait_until([&] { return pool.status()["totals"]["queued"] == 1; }, 5s));
    fd.reset();
    CHECK(wait_until([&] { return pool.status()["totals"]["queued"] == 0; }, 1s, 10ms));
    long_request.join();
}

TEST_CASE("X-Request-Timeout bounds the wait for a slot", "[integration]") {
    PoolProcess pool(pool_args(1, {"--parallel", "1"}, {"--tokens-per-second", "10"}));
    REQUIRE(pool.wait_ready(1, 20s));
    std::thread long_request([&] { post_status(pool, R"({"prompt":"x","max_tokens":30})"); });
    REQUIRE(wait_until([&] { return pool.status()["totals"]["inflight"] == 1; }, 5s));
    const auto started = std::chrono::steady_clock::now();
    const auto status =
        post_status(pool, R"({"prompt":"x","max_tokens":1})", {{"X-Request-Timeout", "0.5"}});
    const auto waited = std::chrono::steady_clock::now() - started;
    CHECK(status == 503);
    CHECK(waited < 2500ms);  // refused near its own deadline, not after the 3 s request
    long_request.join();
}

TEST_CASE("client API keys: 401 in llama-server's shape, /health stays public", "[integration]") {
    TempDir dir;
    const auto key_file = dir.file("keys.txt");
    std::ofstream(key_file) << "# comment\nfile-key\n\n";
    PoolProcess pool(
        pool_args(1, {"--api-key", "k1", "--api-key-file", key_file, "--metrics-key", "m"}));
    REQUIRE(pool.wait_ready(1, 20s));
    auto c = pool.client();
    const auto denied =
        c.Post("/completion", R"({"prompt":"x","max_tokens":1})", "application/json");
    REQUIRE(denied);
    CHECK(denied->status == 401);
    const auto error = json::parse(denied->body)["error"];
    CHECK(error["type"] == "authentication_error");
    CHECK(error["code"] == 401);
    CHECK(post_status(pool, R"({"prompt":"x","max_tokens":1})", {{"Authorization", "Bearer k1"}}) ==
          200);
    CHECK(post_status(pool, R"({"prompt":"x","max_tokens":1})", {{"X-Api-Key", "file-key"}}) ==
          200);
    CHECK(post_status(pool, R"({"prompt":"x","max_tokens":1})", {{"Authorization", "Bearer k2"}}) ==
          401);
    CHECK(c.Get("/health")->status == 200);
    // The pool's own key to the worker is used upstream, not the client's.
    CHECK(pool.process().output().find("k1") == std::string::npos);
    std::remove(key_file.c_str());
}

TEST_CASE("rate limiting answers 429 with a Retry-After", "[integration]") {
    PoolProcess pool(pool_args(1, {"--rate-limit-rps", "1", "--rate-limit-burst", "3"}));
    REQUIRE(pool.wait_ready(1, 20s));
    std::vector<int> statuses;
    std::string retry_after, body;
    for (int i = 0; i < 5; ++i) {
        const auto r = pool.client().Post("/completion", R"({"prompt":"x","max_tokens":1})",
                                          "application/json");
        REQUIRE(r);
        statuses.push_back(r->status);
        retry_after = r->get_header_value("Retry-After");
        body = r->body;
    }
    CHECK(std::count(statuses.begin(), statuses.end(), 200) == 3);
    CHECK(statuses.back() == 429);
    CHECK(std::stoi(retry_after) >= 1);
    CHECK(json::parse(body)["error"]["type"] == "rate_limit_error");
    CHECK(pool.client().Get("/health")->status == 200);  // not rate limited
}
