// The admission queue shared fairly between tenants, and the stall watchdog, through the pool
// with fake workers: a flood by one client key does not starve another, and a worker that
// stops generating while its /health stays green is taken out and replaced.
#include <atomic>
#include <catch2/catch.hpp>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "test/support/pool_fixture.hpp"

using namespace llama_pool::test;
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

httplib::Headers bearer(const std::string& key) {
    return {{"Authorization", "Bearer " + key}};
}

}  // namespace

TEST_CASE("a client that floods the queue does not starve another one", "[integration]") {
    TempDir dir;
    const auto config = dir.file("pool.json");
    // Tenant "batch" is configured (its label shows by name); the other key is a stranger,
    // shown by a hash of its key.
    std::ofstream(config) << R"({"tenants": [{"name": "batch", "keys": ["key-batch"]}]})";
    const auto faults = dir.file("faults");
    std::ofstream(faults) << "";
    PoolProcess pool(fake_pool_args(
        1,
        {"--config", config, "--parallel", "1", "--api-key", "key-batch", "--api-key", "key-chat"},
        {"--fault-file", faults, "--latency-ms", "20"}));
    REQUIRE(pool.wait_ready(1, 20s));
    // Every completion is held until the test releases it, so the queue is built without
    // racing the worker: the first batch request takes the slot, eleven more wait.
    std::ofstream(faults) << pool.status()["workers"][0]["port"].get<int>() << " hold\n";
    std::mutex order_mutex;
    std::vector<std::string> finished;
    std::vector<std::thread> clients;
    std::atomic<int> failures{0};
    const auto send = [&](const std::string& key) {
        clients.emplace_back([&, key] {
            const auto r = pool.client(60s).Post(
                "/completion", bearer(key), R"({"prompt":"x","n_predict":2})", "application/json");
            if (!r || r->status != 200) {
                ++failures;
            }
            std::lock_guard lock(order_mutex);
            finished.push_back(key);
        });
    };
    const auto queued = [&] { return pool.status()["totals"]["queued"].get<int>(); };
    send("key-batch");
    REQUIRE(wait_until([&] { return pool.status()["totals"]["inflight"].get<int>() == 1; }, 20s));
    for (int i = 1; i < 12; ++i) {
        send("key-batch");
    }
    REQUIRE(wait_until([&] { return queued() == 11; }, 20s));
    send("key-chat");
    REQUIRE(wait_until([&] { return queued() == 12; }, 20s));

    // /pool/queue names the waiting tenants, never a key.
    auto client = pool.client(10s);
    const auto q = client.Get("/pool/queue");
    REQUIRE(q);
    REQUIRE(q->status == 200);
    CHECK(q->body.find("key-batch") == std::string::npos);
    CHECK(q->body.find("key-chat") == std::string::npos);
    const auto doc = json::parse(q->body);
    CHECK(doc["waiting"] == 12);
    std::map<std::string, json> tenants;
    for (const auto& t : doc["groups"][0]["tenants"]) {
        tenants[t["tenant"].get<std::string>()] = t;
    }
    REQUIRE(tenants.count("batch") == 1);
    CHECK(tenants["batch"]["waiting"] == 11);
    CHECK(tenants["batch"]["running"] == 1);
    REQUIRE(tenants.size() == 2);
    const auto other = std::find_if(tenants.begin(), tenants.end(),
                                    [](const auto& kv) { return kv.first != "batch"; });
    CHECK(other->first.rfind("key-", 0) == 0);
    CHECK(other->second["waiting"] == 1);
    // Metrics label the configured tenant only: the stranger's series would be unbounded.
    const auto metrics = client.Get("/metrics");
    REQUIRE(metrics);
    CHECK(metrics->body.find("llama_pool_tenant_requests_waiting{tenant=\"batch\"} 11") !=
          std::string::npos);
    CHECK(metrics->body.find("llama_pool_tenant_requests_running{tenant=\"batch\"} 1") !=
          std::string::npos);
    CHECK(metrics->body.find("tenant=\"key-") == std::string::npos);

    std::ofstream(faults) << "";  // release: the slot now serves the queue in its order
    for (auto& t : clients) {
        t.join();
    }
    CHECK(failures == 0);
    REQUIRE(finished.size() == 13);
    // The chat request goes right after the batch request that held the slot (FIFO would
    // have put it last, behind all eleven).
    const auto chat_at = std::find(finished.begin(), finished.end(), "key-chat") - finished.begin();
    CHECK(chat_at <= 2);
}

TEST_CASE("a worker stuck while busy leaves rotation and its request is served elsewhere",
          "[integration]") {
    TempDir dir;
    const auto faults = dir.file("faults");
    std::ofstream(faults) << "";
    PoolProcess pool(
        fake_pool_args(2, {"--parallel", "1", "--stall-timeout", "1"}, {"--fault-file", faults}));
    REQUIRE(pool.wait_ready(2, 20s));
    const auto stuck = pool.status()["workers"][0];
    const int stuck_port = stuck["port"].get<int>();
    // /health stays green; completions on this worker never produce anything.
    std::ofstream(faults) << stuck_port << " hold\n";
    std::atomic<int> ok{0};
    std::vector<std::thread> clients;
    for (int i = 0; i < 2; ++i) {
        // One request per worker: each has one slot.
        clients.emplace_back([&] {
            const auto r = pool.client(30s).Post("/completion", R"({"prompt":"x","n_predict":2})",
                                                 "application/json");
            ok += r && r->status == 200 ? 1 : 0;
        });
    }
    for (auto& t : clients) {
        t.join();
    }
    // Both answered: the held one was retried on the other worker once the watchdog took
    // the stuck one out (without it, it would wait for the 600 s response timeout).
    CHECK(ok == 2);
    REQUIRE(wait_until(
        [&] {
            const auto w = pool.status()["workers"][0];
            return w["restarts"].get<int>() >= 1 && w["state"] == "ready";
        },
        20s));
    const auto w = pool.status()["workers"][0];
    CHECK(w["last_exit_reason"].get<std::string>().find("stalled") != std::string::npos);
    CHECK(w["port"].get<int>() != stuck_port);
    CHECK_FALSE(pool.log_lines_with("worker_stalled").empty());
    const auto metrics = pool.client(10s).Get("/metrics");
    REQUIRE(metrics);
    CHECK(metrics->body.find("reason=\"stalled\"") != std::string::npos);
}

TEST_CASE("a stream stuck after it started ends with the error event, and the worker is replaced",
          "[integration]") {
    TempDir dir;
    const auto faults = dir.file("faults");
    std::ofstream(faults) << "";
    PoolProcess pool(
        fake_pool_args(1, {"--parallel", "1", "--stall-timeout", "1"}, {"--fault-file", faults}));
    REQUIRE(pool.wait_ready(1, 20s));
    const int port = pool.status()["workers"][0]["port"].get<int>();
    std::ofstream(faults) << port << " stall 2\n";  // two events, then nothing, forever
    const auto r = pool.client(30s).Post(
        "/completion", R"({"prompt":"x","n_predict":8,"stream":true})", "application/json");
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(r->body.find("tok1") != std::string::npos);
    CHECK(r->body.find("\"error\"") != std::string::npos);
    REQUIRE(wait_until(
        [&] {
            const auto w = pool.status()["workers"][0];
            return w["restarts"].get<int>() >= 1 && w["state"] == "ready";
        },
        20s));
    CHECK(pool.status()["workers"][0]["last_exit_reason"].get<std::string>().find("stalled") !=
          std::string::npos);
}
