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

using namespace llama_pool;
using namespace std::chrono_literals;

namespace {

// Records the worker's in-flight count at every write and at finish().
class RecordingExchange final : public Exchange {
  public:
    RecordingExchange(BackendRegistry& registry, std::string body) : registry_(registry) {
        request_.method = "POST";
        request_.target = "/completion";
        request_.version_minor = 1;
        request_.body = std::move(body);
    }
    const HttpRequest& request() const override { return request_; }
    const std::string& remote_address() const override { return remote_; }
    bool respond(int status, Headers, std::string_view body) override {
        status_ = status;
        body_ = body;
        return true;
    }
    bool begin(int status, Headers, std::optional<std::size_t> length) override {
        status_ = status;
        length_ = length;
        return true;
    }
    bool write(std::string_view data) override {
        body_ += data;
        inflight_at_write.push_back(registry_.worker_inflight("w"));
        return true;
    }
    bool finish() override {
        inflight_at_finish = registry_.worker_inflight("w");
        return true;
    }
    void abort() override {}
    bool responded() const override { return status_ != 0; }
    int response_status() const override { return status_; }
    bool client_gone() const override { return false; }
    IoWatch watch() const override { return {}; }

    std::vector<int> inflight_at_write;
    int inflight_at_finish = -1;
    std::optional<std::size_t> length_;
    std::string body_;

  private:
    BackendRegistry& registry_;
    HttpRequest request_;
    std::string remote_ = "127.0.0.1";
    int status_ = 0;
};

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
        RecordingExchange ex(registry, R"({"prompt":"x"})");
        const auto outcome = relay.forward(ex, "/completion", "id-1");
        CHECK(outcome.status == 200);
        REQUIRE(ex.length_.has_value());
        REQUIRE(ex.body_.size() == *ex.length_);
        REQUIRE_FALSE(ex.inflight_at_write.empty());
        CHECK(ex.inflight_at_write.back() == 0);
    }
    SECTION("a stream: the end comes with finish()") {
        RecordingExchange ex(registry, R"({"prompt":"x","stream":true})");
        const auto outcome = relay.forward(ex, "/completion", "id-2");
        CHECK(outcome.status == 200);
        CHECK(ex.inflight_at_finish == 0);
        CHECK(ex.body_.find("\"stop\":true") != std::string::npos);
    }
    CHECK(registry.worker_inflight("w") == 0);
}
