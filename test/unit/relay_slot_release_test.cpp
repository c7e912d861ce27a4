// The relay in-process against a worker on loopback, with an Exchange that records what the
// registry says at the moment its client would see the end of the reply.
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "common/config.hpp"
#include "common/http_server.hpp"
#include "common/log.hpp"
#include "common/random.hpp"
#include "proxy/backend_registry.hpp"
#include "proxy/pool_metrics.hpp"
#include "proxy/relay.hpp"
#include "test/support/test_exchange.hpp"

using namespace llama_pool;
using namespace std::chrono_literals;

namespace {

// A client exchange that records the worker's in-flight count at every write and at finish().
struct Observed {
    std::vector<int> inflight_at_write;
    int inflight_at_finish = -1;
};

test::TestExchange observed_exchange(BackendRegistry& registry, std::string body, Observed& seen) {
    HttpRequest request;
    request.method = "POST";
    request.target = "/completion";
    request.version_minor = 1;
    request.body = std::move(body);
    test::TestExchange ex(std::move(request));
    ex.on_write = [&registry, &seen] {
        seen.inflight_at_write.push_back(registry.worker_inflight("w"));
    };
    ex.on_finish = [&registry, &seen] { seen.inflight_at_finish = registry.worker_inflight("w"); };
    return ex;
}

}  // namespace

TEST_CASE("a worker's slot is free before the client sees the end of its reply",
          "[relay][registry]") {
    // A client that sends its next request as soon as a reply ends (a new connection, picked
    // up at once by an idle server thread) found the worker still full: the slot was released
    // only after the reply had been delivered, so prefix affinity sent it to another worker
    // and lost the prompt cache.
    HttpServerOptions options;
    options.port = 0;
    HttpServer worker(options, [](HttpExchange& ex) {
        Headers headers;
        if (ex.request().body.find("\"stream\":true") != std::string::npos) {
            headers.add("Content-Type", "text/event-stream");
            ex.begin(200, headers, std::nullopt);
            ex.write("data: {\"content\":\"a\",\"stop\":false}\n\n");
            ex.write("data: {\"content\":\"\",\"stop\":true,\"tokens_predicted\":1}\n\n");
            ex.finish();
        } else {
            headers.add("Content-Type", "application/json");
            ex.respond(200, headers, R"({"content":"a","tokens_predicted":1})");
        }
    });
    std::string error;
    REQUIRE(worker.start(error));
    SeededRandom random(1);
    SteadyTimeSource time;
    BackendRegistry registry(random, time);
    registry.worker_ready({"w", "127.0.0.1", worker.port(), 1, ""});
    PoolConfig config;
    Logger log(LogFormat::text, LogLevel::error, [](std::string_view) {});
    PoolMetrics metrics("test");
    Relay relay(config, registry, log, random, metrics);

    SECTION("a reply with a length: the last write completes it") {
        Observed seen;
        auto ex = observed_exchange(registry, R"({"prompt":"x"})", seen);
        const auto outcome = relay.forward(ex, "/completion", "id-1");
        CHECK(outcome.status == 200);
        REQUIRE(ex.length().has_value());
        REQUIRE(ex.body().size() == *ex.length());
        REQUIRE_FALSE(seen.inflight_at_write.empty());
        CHECK(seen.inflight_at_write.back() == 0);
    }
    SECTION("a stream: the end comes with finish()") {
        Observed seen;
        auto ex = observed_exchange(registry, R"({"prompt":"x","stream":true})", seen);
        const auto outcome = relay.forward(ex, "/completion", "id-2");
        CHECK(outcome.status == 200);
        CHECK(seen.inflight_at_finish == 0);
        CHECK(ex.body().find("\"stop\":true") != std::string::npos);
    }
    CHECK(registry.worker_inflight("w") == 0);
}
