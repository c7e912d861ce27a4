// Bugs the chaos run (make chaos, scripts/chaos/chaos.py) found, one regression test each,
// with fake workers whose faults are set through their fault file.
#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "test/support/pool_fixture.hpp"

using namespace llama_pool::test;
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

// A fault file shared by a pool's fake workers; removed at the end.
class FaultFile {
  public:
    explicit FaultFile(const std::string& name) : path_(dir_.file(name + ".faults")) {
        std::ofstream(path_) << "";
    }
    const std::string& path() const { return path_; }
    void set(int port, const std::string& fault) {
        std::ofstream(path_) << port << " " << fault << "\n";
    }

  private:
    TempDir dir_;  // declared first: path_ is inside it
    std::string path_;
};

std::string stream_body(std::string& received, httplib::Response& res, PoolProcess& pool,
                        const std::string& body) {
    auto c = pool.client(30s);
    res = stream_post(c, "/completion", body, [&](std::string_view piece) { received += piece; });
    return received;
}

// The data of every event of an SSE body, and whether the body ends on an event boundary.
std::vector<std::string> events_of(const std::string& body, bool& whole) {
    whole = body.empty() || body.size() >= 2 && body.substr(body.size() - 2) == "\n\n";
    std::vector<std::string> out;
    std::size_t pos = 0;
    while (pos < body.size()) {
        auto end = body.find("\n\n", pos);
        if (end == std::string::npos) {
            end = body.size();
        }
        const auto event = body.substr(pos, end - pos);
        if (event.rfind("data: ", 0) == 0) {
            out.push_back(event.substr(6));
        }
        pos = end + 2;
    }
    return out;
}

}  // namespace

TEST_CASE("a worker that cuts its JSON reply short is retried and then ejected",
          "[integration][chaos]") {
    // Regression: the response head was forwarded as soon as it arrived, so a worker that
    // died while sending its body cut the client's reply (a non-stream request lost to a
    // worker fault); and its breaker heard "success" at the head, then "failure" at the cut,
    // so it never opened and the instantly failing worker drew ever more traffic.
    FaultFile faults("truncate");
    PoolProcess pool(fake_pool_args(2, {"--breaker-failures", "3", "--breaker-ejection", "60"},
                                    {"--fault-file", faults.path()}));
    REQUIRE(pool.wait_ready(2, 20s));
    faults.set(pool.status()["workers"][0]["port"].get<int>(), "truncate");
    for (int i = 0; i < 30; ++i) {
        const auto r = pool.client().Post("/completion", R"({"prompt":"x","max_tokens":3})",
                                          "application/json");
        REQUIRE(r);
        CHECK(r->status == 200);
        CHECK_FALSE(json::parse(r->body, nullptr, false).is_discarded());
    }
    CHECK(pool.status()["workers"][0]["breaker"] == "open");
}

TEST_CASE("a stream whose worker fails before its first event is retried on another worker",
          "[integration][chaos]") {
    // Regression: the stream's head went to the client before any event, so a worker that
    // sent its head and then stalled or died left the client with an empty 200 stream,
    // although nothing had been produced and another worker could have served it.
    FaultFile faults("stall-start");
    PoolProcess pool(
        fake_pool_args(2, {"--stream-idle-timeout", "1"}, {"--fault-file", faults.path()}));
    REQUIRE(pool.wait_ready(2, 20s));
    const auto port = pool.status()["workers"][0]["port"].get<int>();
    for (const std::string fault : {"stall 0", "truncate 0"}) {
        faults.set(port, fault);
        for (int i = 0; i < 6; ++i) {
            std::string received;
            httplib::Response res;
            stream_body(received, res, pool, R"({"prompt":"x","max_tokens":4,"stream":true})");
            INFO(fault << ": " << received);
            CHECK(res.status == 200);
            CHECK(received.find("\"stop\":true") != std::string::npos);
            CHECK(received.find("\"source\":\"llama-pool\"") == std::string::npos);
        }
    }
}

TEST_CASE("a stream cut after its first events ends with whole events and the pool's error",
          "[integration][chaos]") {
    // Regression: a worker that died in the middle of an event passed half an event on, and
    // the stream then just ended: a client could not tell a cut stream from a finished one.
    FaultFile faults("truncate-mid");
    PoolProcess pool(fake_pool_args(1, {}, {"--fault-file", faults.path()}));
    REQUIRE(pool.wait_ready(1, 20s));
    faults.set(pool.status()["workers"][0]["port"].get<int>(), "truncate 3");
    std::string received;
    httplib::Response res;
    stream_body(received, res, pool, R"({"prompt":"x","max_tokens":10,"stream":true})");
    CHECK(res.status == 200);  // a complete chunked response, not a broken connection
    bool whole = false;
    const auto events = events_of(received, whole);
    INFO(received);
    CHECK(whole);
    REQUIRE(events.size() == 4);
    for (int i = 0; i < 3; ++i) {
        CHECK(json::parse(events[i])["content"] == " tok" + std::to_string(i));
    }
    const auto error = json::parse(events[3])["error"];
    CHECK(error["source"] == "llama-pool");
    CHECK(error["code"] == 502);
}

TEST_CASE("a stream whose worker goes silent ends with the pool's 504 after stream_idle_timeout",
          "[integration][chaos]") {
    // Regression: once streams were relayed by the event loop, the silence deadline moved
    // forward every time the loop asked for it, so a stalled stream never timed out and its
    // client waited for its own timeout instead of getting the error event.
    FaultFile faults("stall-mid");
    PoolProcess pool(
        fake_pool_args(1, {"--stream-idle-timeout", "1"}, {"--fault-file", faults.path()}));
    REQUIRE(pool.wait_ready(1, 20s));
    faults.set(pool.status()["workers"][0]["port"].get<int>(), "stall 2");
    std::string received;
    httplib::Response res;
    stream_body(received, res, pool, R"({"prompt":"x","max_tokens":10,"stream":true})");
    CHECK(res.status == 200);
    bool whole = false;
    const auto events = events_of(received, whole);
    INFO(received);
    CHECK(whole);
    REQUIRE(events.size() == 3);
    CHECK(json::parse(events[1])["content"] == " tok1");
    const auto error = json::parse(events[2])["error"];
    CHECK(error["source"] == "llama-pool");
    CHECK(error["code"] == 504);
}

TEST_CASE("a worker answering 500 to sound requests is retried and the client gets a 200",
          "[integration][chaos]") {
    // Regression: only 502/503/504 were retried, so until its breaker opened a worker that
    // answered 500 to everything cost clients their requests.
    FaultFile faults("fail-500");
    PoolProcess pool(fake_pool_args(2, {}, {"--fault-file", faults.path()}));
    REQUIRE(pool.wait_ready(2, 20s));
    faults.set(pool.status()["workers"][0]["port"].get<int>(), "fail 500");
    // Which worker a request tries first is the balancer's choice (a random tie-break between
    // two idle workers), so requests go on until the failing worker has been tried often
    // enough for its breaker to open; every one of them must succeed meanwhile.
    const auto breaker = [&] {
        const auto status = pool.status();
        return status["workers"][0]["breaker"].get<std::string>();
    };
    int sent = 0;
    for (; sent < 200 && breaker() != "open"; ++sent) {
        const auto r = pool.client().Post("/completion", R"({"prompt":"x","max_tokens":2})",
                                          "application/json");
        REQUIRE(r);
        CHECK(r->status == 200);
    }
    INFO("requests sent: " << sent);
    CHECK(breaker() == "open");
}

TEST_CASE("a 500 the request itself causes is passed on and ejects no worker",
          "[integration][chaos]") {
    // llama-server answers malformed JSON with a 500. Counting those against the worker let
    // any client eject every worker with a few bad bodies; retrying them would only repeat
    // the same answer on every worker.
    FaultFile faults("request-500");
    PoolProcess pool(
        fake_pool_args(2, {"--breaker-failures", "2"}, {"--fault-file", faults.path()}));
    REQUIRE(pool.wait_ready(2, 20s));
    for (int i = 0; i < 10; ++i) {
        const auto r = pool.client().Post("/completion", std::string("\xff\x00{not json", 11),
                                          "application/json");
        REQUIRE(r);
        CHECK(r->status == 500);
        CHECK(json::parse(r->body)["error"]["message"].get<std::string>().find("invalid JSON") !=
              std::string::npos);
    }
    // A sound request that every worker answers with a 500: passed on after one second
    // opinion, and the workers are not blamed for it either.
    const auto before = pool.status();
    for (const auto& w : before["workers"]) {
        std::ofstream(faults.path(), std::ios::app) << w["port"].get<int>() << " fail 500\n";
    }
    for (int i = 0; i < 4; ++i) {
        const auto r = pool.client().Post("/completion", R"({"prompt":"x","max_tokens":2})",
                                          "application/json");
        REQUIRE(r);
        CHECK(r->status == 500);
    }
    const auto after = pool.status();
    for (const auto& w : after["workers"]) {
        CHECK(w["breaker"] == "closed");
    }
}
