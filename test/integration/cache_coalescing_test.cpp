// The response cache and Idempotency-Key coalescing through a running pool of fake
// workers. Upstream generations are counted from the pool's own
// llama_pool_upstream_requests_total; OpenAI-shaped replies carry the fake's per-generation
// id ("cmpl-fake-N"), which tells a shared generation from a second one.
#include <atomic>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <thread>

#include "common/socket.hpp"
#include "test/support/pool_fixture.hpp"

using namespace llama_pool::test;
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

const std::string kGreedy = R"({"prompt":"Hello","max_tokens":4,"temperature":0})";

httplib::Result post(PoolProcess& pool, const std::string& path, const std::string& body,
                     const httplib::Headers& headers = {}) {
    return pool.client(30s).Post(path, headers, body, "application/json");
}

// The sum of one metric's samples whose line starts with `prefix` (name plus labels).
double metric_sum(PoolProcess& pool, const std::string& prefix) {
    const auto r = pool.client(5s).Get("/metrics");
    if (!r) {
        return -1;
    }
    double sum = 0;
    std::istringstream lines(r->body);
    for (std::string line; std::getline(lines, line);) {
        if (line.rfind(prefix, 0) == 0) {
            sum += std::stod(line.substr(line.rfind(' ') + 1));
        }
    }
    return sum;
}

double upstream_attempts(PoolProcess& pool) {
    return metric_sum(pool, "llama_pool_upstream_requests_total{");
}

std::string id_of(const httplib::Result& r) {
    return json::parse(r->body).value("id", "");
}

}  // namespace

TEST_CASE("a repeated deterministic request is a cache hit and reaches a worker once",
          "[integration][cache]") {
    PoolProcess pool(fake_pool_args(2, {"--cache"}));
    REQUIRE(pool.wait_ready(2, 20s));
    const auto first = post(pool, "/completion", kGreedy);
    REQUIRE(first);
    CHECK(first->status == 200);
    CHECK(first->get_header_value("X-Cache") == "MISS");
    const auto second = post(pool, "/completion", kGreedy);
    REQUIRE(second);
    CHECK(second->status == 200);
    CHECK(second->get_header_value("X-Cache") == "HIT");
    CHECK(second->has_header("Age"));
    CHECK(second->body == first->body);
    CHECK(second->get_header_value("X-Request-Id") != first->get_header_value("X-Request-Id"));
    // Another spelling of the same JSON is the same request.
    const auto respelled = post(
        pool, "/completion", "{ \"temperature\": 0, \"max_tokens\": 4,\n \"prompt\": \"Hello\" }");
    REQUIRE(respelled);
    CHECK(respelled->get_header_value("X-Cache") == "HIT");
    CHECK(wait_until([&] { return upstream_attempts(pool) == 1; }, 5s));
    // Another route with the same body is another request.
    const auto other_route = post(pool, "/v1/completions", kGreedy);
    REQUIRE(other_route);
    CHECK(other_route->get_header_value("X-Cache") == "MISS");
    // The relay counts an attempt when it ends, which may be just after the client has the
    // reply: wait for the count rather than read it once.
    CHECK(wait_until([&] { return upstream_attempts(pool) == 2; }, 5s));
    CHECK(metric_sum(pool, "llama_pool_cache_lookups_total{result=\"hit\"}") == 2);
    CHECK(metric_sum(pool, "llama_pool_cache_lookups_total{result=\"miss\"}") == 2);
    CHECK(metric_sum(pool, "llama_pool_cache_entries") == 2);
}

TEST_CASE("Cache-Control: no-cache bypasses the lookup and its fresh reply replaces the entry",
          "[integration][cache]") {
    PoolProcess pool(fake_pool_args(1, {"--cache"}));
    REQUIRE(pool.wait_ready(1, 20s));
    const auto first = post(pool, "/v1/completions", kGreedy);
    REQUIRE(first);
    REQUIRE(first->get_header_value("X-Cache") == "MISS");
    const auto fresh = post(pool, "/v1/completions", kGreedy, {{"Cache-Control", "no-cache"}});
    REQUIRE(fresh);
    CHECK(fresh->status == 200);
    CHECK(fresh->get_header_value("X-Cache") == "BYPASS");
    CHECK(id_of(fresh) != id_of(first));  // a new generation
    const auto after = post(pool, "/v1/completions", kGreedy);
    REQUIRE(after);
    CHECK(after->get_header_value("X-Cache") == "HIT");
    CHECK(id_of(after) == id_of(fresh));
    // no-store: fresh, and not stored either.
    const auto unstored = post(pool, "/v1/completions", kGreedy, {{"Cache-Control", "no-store"}});
    REQUIRE(unstored);
    CHECK(unstored->get_header_value("X-Cache") == "BYPASS");
    CHECK(id_of(post(pool, "/v1/completions", kGreedy)) == id_of(fresh));
    CHECK(wait_until([&] { return upstream_attempts(pool) == 3; }, 5s));
    CHECK(metric_sum(pool, "llama_pool_cache_lookups_total{result=\"bypass\"}") == 2);
}

TEST_CASE("sampled, streamed and failed requests are not cached and carry no X-Cache",
          "[integration][cache]") {
    PoolProcess pool(fake_pool_args(1, {"--cache"}));
    REQUIRE(pool.wait_ready(1, 20s));
    for (const auto* body :
         {R"({"prompt":"x","max_tokens":2})", R"({"prompt":"x","max_tokens":2,"temperature":0.7})",
          R"({"prompt":"x","max_tokens":2,"seed":-1})",
          R"({"prompt":"x","max_tokens":2,"temperature":0,"stream":true})"}) {
        INFO(body);
        for (int i = 0; i < 2; ++i) {
            const auto r = post(pool, "/completion", body);
            REQUIRE(r);
            CHECK(r->status == 200);
            CHECK_FALSE(r->has_header("X-Cache"));
        }
    }
    CHECK(wait_until([&] { return upstream_attempts(pool) == 8; }, 5s));
    // A deterministic request the worker refuses: looked up, missed, not stored.
    for (int i = 0; i < 2; ++i) {
        const auto r = post(pool, "/completion", R"({"max_tokens":2,"temperature":0})");
        REQUIRE(r);
        CHECK(r->status == 400);
        CHECK(r->get_header_value("X-Cache") == "MISS");
    }
    CHECK(wait_until([&] { return upstream_attempts(pool) == 10; }, 5s));
    CHECK(metric_sum(pool, "llama_pool_cache_entries") == 0);
}

TEST_CASE("cached replies never cross API keys", "[integration][cache]") {
    PoolProcess pool(fake_pool_args(1, {"--cache", "--api-key", "key-a", "--api-key", "key-b"}));
    REQUIRE(pool.wait_ready(1, 20s));
    const httplib::Headers a = {{"Authorization", "Bearer key-a"}};
    const httplib::Headers b = {{"X-Api-Key", "key-b"}};
    CHECK(post(pool, "/completion", kGreedy, a)->get_header_value("X-Cache") == "MISS");
    CHECK(post(pool, "/completion", kGreedy, a)->get_header_value("X-Cache") == "HIT");
    CHECK(post(pool, "/completion", kGreedy, b)->get_header_value("X-Cache") == "MISS");
    CHECK(post(pool, "/completion", kGreedy, b)->get_header_value("X-Cache") == "HIT");
    // The same key presented either way is the same tenant.
    CHECK(
        post(pool, "/completion", kGreedy, {{"X-Api-Key", "key-a"}})->get_header_value("X-Cache") ==
        "HIT");
    CHECK(post(pool, "/completion", kGreedy)->status == 401);
    CHECK(wait_until([&] { return upstream_attempts(pool) == 2; }, 5s));
}

TEST_CASE("two concurrent requests with one Idempotency-Key share one generation",
          "[integration][coalescing]") {
    // One worker (two slots), so that its generation ids tell generations apart.
    PoolProcess pool(fake_pool_args(1, {}, {"--tokens-per-second", "20"}));
    REQUIRE(pool.wait_ready(1, 20s));
    // 1.5 s, sampled: long enough for the second request to find it running.
    const std::string body = R"({"prompt":"x","max_tokens":30})";
    const httplib::Headers key = {{"Idempotency-Key", "job-42"}};
    std::optional<httplib::Result> first_result;
    std::thread leader([&] { first_result = post(pool, "/v1/completions", body, key); });
    REQUIRE(wait_until([&] { return pool.status()["totals"]["inflight"] == 1; }, 5s));
    const auto second = post(pool, "/v1/completions", body, key);
    leader.join();
    REQUIRE(first_result);
    const auto& first = *first_result;
    REQUIRE(first);
    REQUIRE(second);
    CHECK(first->status == 200);
    CHECK(second->status == 200);
    CHECK(second->body == first->body);
    CHECK(id_of(second) == id_of(first));
    CHECK(second->get_header_value("Content-Type") == first->get_header_value("Content-Type"));
    CHECK(second->get_header_value("Idempotent-Replayed") == "true");
    CHECK_FALSE(first->has_header("Idempotent-Replayed"));
    CHECK(wait_until([&] { return upstream_attempts(pool) == 1; }, 5s));
    CHECK(metric_sum(pool, "llama_pool_idempotent_requests_total{result=\"attached\"}") == 1);

    SECTION("the same key later replays the reply") {
        const auto third = post(pool, "/v1/completions", body, key);
        REQUIRE(third);
        CHECK(third->body == first->body);
        CHECK(third->get_header_value("Idempotent-Replayed") == "true");
        CHECK(wait_until([&] { return upstream_attempts(pool) == 1; }, 5s));
    }
    SECTION("the same key with a different body is refused with 422") {
        const auto other = post(pool, "/v1/completions", R"({"prompt":"y","max_tokens":30})", key);
        REQUIRE(other);
        CHECK(other->status == 422);
        const auto error = json::parse(other->body)["error"];
        CHECK(error["source"] == "llama-pool");
        CHECK(error["type"] == "invalid_request_error");
        CHECK(wait_until([&] { return upstream_attempts(pool) == 1; }, 5s));
    }
    SECTION("without a key, the same request runs again") {
        const auto plain = post(pool, "/v1/completions", body);
        REQUIRE(plain);
        CHECK(id_of(plain) != id_of(first));
        CHECK(wait_until([&] { return upstream_attempts(pool) == 2; }, 5s));
    }
}

TEST_CASE("Idempotency-Keys are per client: another API key's same key runs on its own",
          "[integration][coalescing]") {
    PoolProcess pool(fake_pool_args(1, {"--api-key", "key-a", "--api-key", "key-b"}));
    REQUIRE(pool.wait_ready(1, 20s));
    const auto a = post(pool, "/v1/completions", R"({"prompt":"a","max_tokens":2})",
                        {{"Authorization", "Bearer key-a"}, {"Idempotency-Key", "1"}});
    const auto b = post(pool, "/v1/completions", R"({"prompt":"b","max_tokens":2})",
                        {{"Authorization", "Bearer key-b"}, {"Idempotency-Key", "1"}});
    REQUIRE(a);
    REQUIRE(b);
    CHECK(a->status == 200);
    CHECK(b->status == 200);  // not a conflict: a different client's key
    CHECK(id_of(a) != id_of(b));
    CHECK(wait_until([&] { return upstream_attempts(pool) == 2; }, 5s));
}

TEST_CASE("a client that hangs up and re-sends with the same key gets the one generation",
          "[integration][coalescing]") {
    PoolProcess pool(fake_pool_args(1, {}, {"--tokens-per-second", "20"}));
    REQUIRE(pool.wait_ready(1, 20s));
    const std::string body = R"({"prompt":"x","max_tokens":30})";  // 1.5 s
    // The client sends, waits until the worker is generating, then gives up and closes.
    const auto send_and_hang_up = [&](const std::string& key) {
        const auto deadline = std::chrono::steady_clock::now() + 10s;
        std::string error;
        auto fd = llama_pool::connect_tcp("127.0.0.1", pool.port(), deadline, error);
        REQUIRE(fd.valid());
        llama_pool::write_all(
            fd.get(),
            "POST /v1/completions HTTP/1.1\r\nHost: x\r\nIdempotency-Key: " + key +
                "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body,
            deadline);
        REQUIRE(wait_until([&] { return pool.status()["totals"]["inflight"] == 1; }, 5s));
    };

    SECTION("re-sent while the generation runs: it attaches") {
        send_and_hang_up("retry-1");
        const auto retry = post(pool, "/v1/completions", body, {{"Idempotency-Key", "retry-1"}});
        REQUIRE(retry);
        CHECK(retry->status == 200);
        CHECK(json::parse(retry->body)["usage"]["completion_tokens"] == 30);
        CHECK(retry->get_header_value("Idempotent-Replayed") == "true");
        CHECK(metric_sum(pool, "llama_pool_idempotent_requests_total{result=\"attached\"}") == 1);
    }
    SECTION("re-sent after it finished: the kept reply is replayed") {
        send_and_hang_up("retry-2");
        REQUIRE(wait_until(
            [&] {
                return metric_sum(pool, "llama_pool_idempotency_keys{state=\"completed\"}") == 1;
            },
            5s));
        const auto retry = post(pool, "/v1/completions", body, {{"Idempotency-Key", "retry-2"}});
        REQUIRE(retry);
        CHECK(retry->status == 200);
        CHECK(json::parse(retry->body)["usage"]["completion_tokens"] == 30);
        CHECK(metric_sum(pool, "llama_pool_idempotent_requests_total{result=\"replayed\"}") == 1);
    }
    // The generation was neither cancelled with the first client nor run twice.
    CHECK(metric_sum(pool, "llama_pool_upstream_requests_total{worker=\"0\",outcome=\"ok\"}") == 1);
    CHECK(wait_until([&] { return upstream_attempts(pool) == 1; }, 5s));
}
