// The response cache (LRU by bytes, TTL, 200 only, keys per tenant) and the request traits
// that decide what may be cached: pure code on a fake clock.
#include "proxy/response_cache.hpp"

#include <catch2/catch.hpp>
#include <memory>
#include <string>

#include "proxy/request_traits.hpp"
#include "test/support/fakes.hpp"

using namespace llama_pool;
using namespace std::chrono_literals;
using llama_pool::test::FakeTime;

namespace {

std::shared_ptr<const StoredReply> reply_of(int status, std::string body) {
    auto r = std::make_shared<StoredReply>();
    r->status = status;
    r->headers.add("Content-Type", "application/json");
    r->body = std::move(body);
    return r;
}

std::string key_for(std::string_view identity, std::string_view body) {
    return response_cache_key(identity, "POST", "/completion", body);
}

// The bytes an entry holds, so that bounds can be set to fit exactly N entries.
std::size_t entry_bytes(const std::string& key, const StoredReply& reply) {
    return key.size() + reply.size();
}

HttpRequest post(std::string body, Headers headers = {}) {
    HttpRequest r;
    r.method = "POST";
    r.target = "/completion";
    r.body = std::move(body);
    r.headers = std::move(headers);
    return r;
}

bool deterministic(const char* body) {
    return is_deterministic(nlohmann::json::parse(body));
}

}  // namespace

// ---- ResponseCache --------------------------------------------------------------------------

TEST_CASE("a stored reply is a hit for the same key and a miss for any other", "[cache]") {
    FakeTime time;
    ResponseCache cache({1 << 20, 60s}, time);
    const auto key = key_for("", R"({"prompt":"a","temperature":0})");
    CHECK_FALSE(cache.get(key));
    REQUIRE(cache.put(key, reply_of(200, "A")) == ResponseCache::StoreResult::stored);
    const auto hit = cache.get(key);
    REQUIRE(hit);
    CHECK(hit->reply->body == "A");
    CHECK(hit->reply->status == 200);
    CHECK_FALSE(cache.get(key_for("", R"({"prompt":"b","temperature":0})")));
    CHECK_FALSE(cache.get(
        response_cache_key("", "POST", "/v1/completions", R"({"prompt":"a","temperature":0})")));
    CHECK(cache.stats().entries == 1);
}

TEST_CASE("only 200 replies are stored", "[cache]") {
    FakeTime time;
    ResponseCache cache({1 << 20, 60s}, time);
    for (const int status : {201, 204, 400, 404, 429, 500, 503}) {
        INFO(status);
        CHECK(cache.put(key_for("", std::to_string(status)), reply_of(status, "x")) ==
              ResponseCache::StoreResult::not_ok);
    }
    CHECK(cache.put(key_for("", "null"), nullptr) == ResponseCache::StoreResult::not_ok);
    CHECK(cache.stats().entries == 0);
    CHECK(cache.stats().bytes == 0);
}

TEST_CASE("the same request under two API keys is two entries: no cross-key leakage", "[cache]") {
    FakeTime time;
    ResponseCache cache({1 << 20, 60s}, time);
    const std::string body = R"({"prompt":"secret","temperature":0})";
    REQUIRE(cache.put(key_for("key-a", body), reply_of(200, "for A")) ==
            ResponseCache::StoreResult::stored);
    CHECK_FALSE(cache.get(key_for("key-b", body)));
    CHECK_FALSE(cache.get(key_for("", body)));  // nor to a client without a key
    REQUIRE(cache.put(key_for("key-b", body), reply_of(200, "for B")) ==
            ResponseCache::StoreResult::stored);
    CHECK(cache.get(key_for("key-a", body))->reply->body == "for A");
    CHECK(cache.get(key_for("key-b", body))->reply->body == "for B");
}

TEST_CASE("key parts cannot run into one another", "[cache]") {
    CHECK(response_cache_key("ab", "POST", "/x", "{}") !=
          response_cache_key("a", "bPOST", "/x", "{}"));
    CHECK(response_cache_key("", "POST", "/x", "1{}") !=
          response_cache_key("", "POST", "/x1", "{}"));
    CHECK(response_cache_key("k", "POST", "/x", "{}") ==
          response_cache_key("k", "POST", "/x", "{}"));
}

TEST_CASE("the least recently used replies go first when the byte bound is reached", "[cache]") {
    FakeTime time;
    const auto a = key_for("", "a"), b = key_for("", "b"), c = key_for("", "c");
    const auto reply = reply_of(200, std::string(100, 'x'));
    const auto one = entry_bytes(a, *reply);
    ResponseCache cache({2 * one, 60s}, time);  // room for exactly two
    REQUIRE(cache.put(a, reply) == ResponseCache::StoreResult::stored);
    REQUIRE(cache.put(b, reply) == ResponseCache::StoreResult::stored);
    CHECK(cache.stats().bytes == 2 * one);
    CHECK(cache.stats().evicted == 0);
    REQUIRE(cache.get(a));  // a is now the most recently used: b goes next
    REQUIRE(cache.put(c, reply) == ResponseCache::StoreResult::stored);
    CHECK(cache.get(a));
    CHECK(cache.get(c));
    CHECK_FALSE(cache.get(b));
    CHECK(cache.stats().entries == 2);
    CHECK(cache.stats().bytes == 2 * one);
    CHECK(cache.stats().evicted == 1);

    SECTION("a bigger reply evicts as many as it needs") {
        const auto big = reply_of(200, std::string(150, 'y'));
        REQUIRE(cache.put(b, big) == ResponseCache::StoreResult::stored);
        CHECK(cache.stats().entries == 1);
        CHECK(cache.stats().evicted == 3);
        CHECK(cache.get(b));
    }
    SECTION("a reply larger than the whole cache is refused and evicts nothing") {
        const auto huge = reply_of(200, std::string(2 * one, 'z'));
        CHECK(cache.put(b, huge) == ResponseCache::StoreResult::too_large);
        CHECK(cache.stats().entries == 2);
        CHECK(cache.stats().evicted == 1);
    }
    SECTION("replacing an entry keeps the byte count exact") {
        REQUIRE(cache.put(a, reply_of(200, "short")) == ResponseCache::StoreResult::stored);
        CHECK(cache.stats().entries == 2);
        CHECK(cache.stats().bytes == one + entry_bytes(a, *reply_of(200, "short")));
        CHECK(cache.get(a)->reply->body == "short");
    }
}

TEST_CASE("an entry is served until its TTL, not a moment after, and a hit does not extend it",
          "[cache]") {
    FakeTime time;
    ResponseCache cache({1 << 20, 10s}, time);
    const auto key = key_for("", "{}");
    REQUIRE(cache.put(key, reply_of(200, "A")) == ResponseCache::StoreResult::stored);
    time.advance(4s);
    const auto early = cache.get(key);
    REQUIRE(early);
    CHECK(early->age == 4s);
    time.advance(6s - 1ms);
    CHECK(cache.get(key));  // 9.999 s old
    time.advance(1ms);
    CHECK_FALSE(cache.get(key));  // 10 s old: expired, and dropped
    CHECK(cache.stats().entries == 0);
    CHECK(cache.stats().bytes == 0);
    CHECK(cache.stats().expired == 1);

    SECTION("storing again starts a new TTL") {
        REQUIRE(cache.put(key, reply_of(200, "B")) == ResponseCache::StoreResult::stored);
        time.advance(10s - 1ms);
        CHECK(cache.get(key)->reply->body == "B");
    }
}

// ---- RequestTraits: what may be cached ------------------------------------------------------

TEST_CASE("determinism: temperature 0 or a fixed seed, but not llama-server's random seed",
          "[cache][traits]") {
    CHECK(deterministic(R"({"temperature":0})"));
    CHECK(deterministic(R"({"temperature":0.0})"));
    CHECK(deterministic(R"({"temperature":0,"seed":-1})"));  // greedy: the seed plays no part
    CHECK(deterministic(R"({"temperature":0.8,"seed":42})"));
    CHECK(deterministic(R"({"seed":0})"));
    CHECK(deterministic(R"({"seed":4294967294})"));

    CHECK_FALSE(deterministic(R"({})"));  // llama-server's default temperature samples
    CHECK_FALSE(deterministic(R"({"temperature":0.7})"));
    CHECK_FALSE(deterministic(R"({"temperature":"0"})"));
    CHECK_FALSE(deterministic(R"({"seed":-1})"));          // random
    CHECK_FALSE(deterministic(R"({"seed":4294967295})"));  // what -1 becomes: random
    CHECK_FALSE(deterministic(R"({"seed":-2})"));
    CHECK_FALSE(deterministic(R"({"seed":1.5})"));
    CHECK_FALSE(deterministic(R"({"seed":"42"})"));
    CHECK_FALSE(deterministic(R"({"seed":null})"));
    CHECK_FALSE(is_deterministic(nlohmann::json::array()));
}

TEST_CASE("the canonical body sorts keys and drops spacing, non-objects have none",
          "[cache][traits]") {
    const auto a =
        read_request_traits(post(R"({"temperature":0,"prompt":"x","n_predict":4})"), "/completion");
    const auto b = read_request_traits(
        post("{ \"n_predict\" : 4,\n \"prompt\": \"x\", \"temperature\": 0 }"), "/completion");
    REQUIRE(a.canonical_body);
    CHECK(*a.canonical_body == R"({"n_predict":4,"prompt":"x","temperature":0})");
    CHECK(a.canonical_body == b.canonical_body);
    CHECK(a.fingerprint == b.fingerprint);
    CHECK(a.cacheable());

    for (const auto* body : {"not json", "[1,2]", "\"text\"", "{\"prompt\":", ""}) {
        INFO(body);
        const auto t = read_request_traits(post(body), "/completion");
        CHECK_FALSE(t.canonical_body);
        CHECK_FALSE(t.cacheable());
    }
}

TEST_CASE("only deterministic, non-streamed JSON POSTs are cacheable", "[cache][traits]") {
    const auto traits = [](std::string body, std::string method = "POST") {
        auto r = post(std::move(body));
        r.method = std::move(method);
        return read_request_traits(r, "/completion");
    };
    CHECK(traits(R"({"prompt":"x","temperature":0})").cacheable());
    CHECK(traits(R"({"prompt":"x","temperature":0,"stream":false})").cacheable());
    CHECK_FALSE(traits(R"({"prompt":"x","temperature":0,"stream":true})").cacheable());
    // A stream flag we cannot read as false is taken as a stream.
    CHECK_FALSE(traits(R"({"prompt":"x","temperature":0,"stream":"no"})").cacheable());
    CHECK_FALSE(traits(R"({"prompt":"x","temperature":0,"stream":null})").cacheable());
    CHECK_FALSE(traits(R"({"prompt":"x"})").cacheable());
    CHECK_FALSE(traits(R"({"prompt":"x","temperature":0})", "PUT").cacheable());
}

TEST_CASE("Cache-Control no-cache bypasses the lookup, no-store also skips storing",
          "[cache][traits]") {
    const std::string body = R"({"prompt":"x","temperature":0})";
    const auto with = [&](std::string value) {
        Headers h;
        h.add("Cache-Control", std::move(value));
        return read_request_traits(post(body, h), "/completion");
    };
    const auto plain = read_request_traits(post(body), "/completion");
    CHECK_FALSE(plain.no_cache);
    CHECK_FALSE(plain.no_store);
    CHECK(with("no-cache").no_cache);
    CHECK_FALSE(with("no-cache").no_store);
    CHECK(with("max-age=0, No-Store").no_store);
    CHECK(with("max-age=0, No-Store").no_cache);
    CHECK_FALSE(with("max-age=60").no_cache);
    CHECK(with("no-cache").cacheable());  // still cacheable: the fresh reply may be stored
}

TEST_CASE("the fingerprint tells requests apart by method, target and body", "[traits]") {
    const auto fp = [](std::string method, std::string_view target, std::string body) {
        auto r = post(std::move(body));
        r.method = std::move(method);
        return read_request_traits(r, target).fingerprint;
    };
    const auto base = fp("POST", "/completion", R"({"prompt":"x"})");
    CHECK(base == fp("POST", "/completion", R"({ "prompt" : "x" })"));
    CHECK(base != fp("POST", "/completion", R"({"prompt":"y"})"));
    CHECK(base != fp("POST", "/v1/completions", R"({"prompt":"x"})"));
    CHECK(base != fp("PUT", "/completion", R"({"prompt":"x"})"));
    CHECK(fp("POST", "/completion", "raw a") != fp("POST", "/completion", "raw b"));
}

TEST_CASE("an Idempotency-Key makes a non-streamed POST coalescable", "[traits]") {
    Headers h;
    h.add("Idempotency-Key", "k-1");
    CHECK(read_request_traits(post(R"({"prompt":"x"})", h), "/completion").coalescable());
    CHECK(read_request_traits(post("not json", h), "/completion").coalescable());
    CHECK_FALSE(read_request_traits(post(R"({"prompt":"x","stream":true})", h), "/completion")
                    .coalescable());
    CHECK_FALSE(read_request_traits(post(R"({"prompt":"x"})"), "/completion").coalescable());
    CHECK(read_request_traits(post(R"({"prompt":"x"})", h), "/completion").idempotency_key ==
          "k-1");
}
