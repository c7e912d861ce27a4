// The tee the cache and the coalescer record replies through: the client gets what it
// always got (plus X-Cache), the recording is complete or nothing, and a leader of an
// Idempotency-Key outlives its client.
#include "proxy/recording_exchange.hpp"

#include <catch2/catch.hpp>
#include <string>

using namespace llama_pool;

namespace {

// A client exchange that records what reaches it and can be told it hung up.
class FakeClient final : public Exchange {
  public:
    HttpRequest request_;
    std::string remote_ = "10.0.0.1";
    bool gone = false;
    bool fail_writes = false;
    int status = 0;
    Headers headers;
    std::string body;
    bool finished = false;
    bool aborted = false;

    const HttpRequest& request() const override { return request_; }
    const std::string& remote_address() const override { return remote_; }
    bool respond(int s, Headers h, std::string_view b) override {
        return begin(s, std::move(h), b.size()) && write(b) && finish();
    }
    bool begin(int s, Headers h, std::optional<std::size_t>) override {
        status = s;
        headers = std::move(h);
        return !fail_writes;
    }
    bool write(std::string_view data) override {
        body += data;
        return !fail_writes;
    }
    bool finish() override {
        finished = true;
        return !fail_writes;
    }
    void abort() override { aborted = true; }
    bool responded() const override { return status != 0; }
    int response_status() const override { return status; }
    bool client_gone() const override { return gone; }
    IoWatch watch() const override { return {3, 4}; }
};

Headers reply_headers() {
    Headers h;
    h.add("Content-Type", "application/json");
    h.add("X-Request-Id", "req-1");
    h.add("X-Cache", "HIT");  // from a pool upstream; ours replaces it
    return h;
}

RecordingExchange::Options options(std::size_t max_bytes = 1024, bool outlive = false) {
    RecordingExchange::Options o;
    o.max_bytes = max_bytes;
    o.outlive_client = outlive;
    o.extra_headers.add("X-Cache", "MISS");
    return o;
}

}  // namespace

TEST_CASE("a reply passes through with the extra headers and is recorded without its id",
          "[recording]") {
    FakeClient client;
    RecordingExchange tee(client, options());
    SECTION("respond()") {
        CHECK(tee.respond(200, reply_headers(), R"({"content":"hi"})"));
    }
    SECTION("begin, write in pieces, finish") {
        CHECK(tee.begin(200, reply_headers(), std::nullopt));
        CHECK(tee.write(R"({"content")"));
        CHECK(tee.write(R"(:"hi"})"));
        CHECK(tee.finish());
    }
    CHECK(client.status == 200);
    CHECK(client.body == R"({"content":"hi"})");
    CHECK(client.headers.get("X-Cache") == "MISS");
    CHECK(client.headers.count("X-Cache") == 1);
    CHECK(client.headers.get("X-Request-Id") == "req-1");
    CHECK(tee.responded());
    CHECK(tee.response_status() == 200);
    const auto reply = tee.reply();
    REQUIRE(reply);
    CHECK(reply->status == 200);
    CHECK(reply->body == R"({"content":"hi"})");
    CHECK_FALSE(reply->headers.has("X-Request-Id"));
    CHECK(reply->headers.get("X-Cache") == "HIT");  // as the relay gave it, not our extra
    CHECK(reply->headers.get("Content-Type") == "application/json");
}

TEST_CASE("an incomplete, aborted or oversized reply records nothing", "[recording]") {
    FakeClient client;
    SECTION("nothing sent") {
        RecordingExchange tee(client, options());
        CHECK_FALSE(tee.reply());
    }
    SECTION("not finished") {
        RecordingExchange tee(client, options());
        tee.begin(200, reply_headers(), std::nullopt);
        tee.write("partial");
        CHECK_FALSE(tee.reply());
    }
    SECTION("aborted") {
        RecordingExchange tee(client, options());
        tee.begin(200, reply_headers(), 10);
        tee.write("12345");
        tee.abort();
        CHECK(client.aborted);
        CHECK_FALSE(tee.reply());
    }
    SECTION("over the bound: the client still gets all of it") {
        RecordingExchange tee(client, options(8));
        tee.begin(200, reply_headers(), std::nullopt);
        CHECK(tee.write("12345"));
        CHECK(tee.write("6789"));
        CHECK(tee.finish());
        CHECK(client.body == "123456789");
        CHECK_FALSE(tee.reply());
    }
}

TEST_CASE("without outlive, the client's hang-up and failed writes reach the relay",
          "[recording]") {
    FakeClient client;
    RecordingExchange tee(client, options());
    CHECK(tee.watch().watch_fd == 4);
    CHECK(tee.watch().wake_fd == 3);
    client.gone = true;
    CHECK(tee.client_gone());
    client.fail_writes = true;
    CHECK_FALSE(tee.begin(200, reply_headers(), std::nullopt));
    CHECK_FALSE(tee.client_lost());
}

TEST_CASE("a leader that outlives its client hides the hang-up and records the whole reply",
          "[recording]") {
    FakeClient client;
    RecordingExchange tee(client, options(1024, true));
    CHECK(tee.watch().watch_fd == -1);  // the client's socket no longer wakes the relay
    CHECK(tee.watch().wake_fd == 3);    // shutdown still does
    client.gone = true;
    CHECK_FALSE(tee.client_gone());
    SECTION("gone before the reply starts: nothing is sent to it") {
        CHECK(tee.begin(200, reply_headers(), std::nullopt));
        CHECK(tee.write("all"));
        CHECK(tee.finish());
        CHECK(client.status == 0);
    }
    SECTION("writes failing midway are dropped, not failed") {
        client.gone = false;
        CHECK(tee.begin(200, reply_headers(), std::nullopt));
        client.fail_writes = true;
        CHECK(tee.write("a"));
        CHECK(tee.write("ll"));
        CHECK(tee.finish());
        CHECK(client.body == "a");
    }
    CHECK(tee.client_lost());
    REQUIRE(tee.reply());
    CHECK(tee.reply()->body == "all");
}

TEST_CASE("a length-delimited reply is announced once, before its last bytes reach the client",
          "[recording]") {
    FakeClient client;
    auto o = options();
    int announced = 0;
    std::string client_had;
    o.on_complete = [&](std::shared_ptr<const StoredReply> reply) {
        ++announced;
        REQUIRE(reply);
        CHECK(reply->body == "0123456789");
        client_had = client.body;
    };
    RecordingExchange tee(client, o);
    SECTION("begin with a length, then the pieces") {
        tee.begin(200, reply_headers(), 10);
        tee.write("01234");
        CHECK(announced == 0);
        tee.write("56789");
        CHECK(announced == 1);
        CHECK(client_had == "01234");  // the last piece was not with the client yet
        tee.finish();
    }
    SECTION("respond()") {
        tee.respond(200, reply_headers(), "0123456789");
        CHECK(client_had.empty());
    }
    CHECK(announced == 1);
    CHECK(client.body == "0123456789");
}

TEST_CASE("a chunked or short reply is not announced", "[recording]") {
    FakeClient client;
    auto o = options();
    int announced = 0;
    o.on_complete = [&](std::shared_ptr<const StoredReply>) { ++announced; };
    RecordingExchange tee(client, o);
    SECTION("chunked: whole only by the relay's word, after finish()") {
        tee.begin(200, reply_headers(), std::nullopt);
        tee.write("all");
        tee.finish();
        CHECK(tee.reply());
    }
    SECTION("cut short of its length") {
        tee.begin(200, reply_headers(), 10);
        tee.write("01234");
        tee.finish();
        CHECK_FALSE(tee.reply());
    }
    CHECK(announced == 0);
}
