// The console's rings and sampler on a fake clock, its page, and the events route.
#include "proxy/console/console.hpp"

#include <atomic>
#include <catch2/catch.hpp>
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "common/log.hpp"
#include "proxy/group_set.hpp"
#include "proxy/pool_routes.hpp"
#include "test/support/fakes.hpp"
#include "test/support/test_exchange.hpp"

using namespace llama_pool;
using json = nlohmann::json;

namespace {

HttpRequest get(const std::string& target) {
    HttpRequest r;
    r.method = "GET";
    r.target = target;
    return r;
}

json status_doc() {
    return {
        {"version", "t"},
        {"workers", json::array({{{"id", "0"},
                                  {"group", "chat"},
                                  {"state", "ready"},
                                  {"pid", 42},
                                  {"inflight", 1},
                                  {"slots", 4},
                                  {"restarts", 2},
                                  {"detail", "<b>x</b>"}}})},
        {"totals", {{"workers", 1}, {"ready", 1}, {"inflight", 1}, {"slots", 4}, {"queued", 0}}}};
}

std::vector<json> points_of(const json& history, const char* series) {
    return history["series"][series].get<std::vector<json>>();
}

}  // namespace

TEST_CASE("a series ring keeps the newest points, oldest first", "[console]") {
    SeriesRing ring(3);
    CHECK(ring.size() == 0);
    CHECK(ring.points().empty());
    ring.push({1, 10});
    ring.push({2, 20});
    CHECK(ring.size() == 2);
    CHECK(ring.latest().t_ms == 2);
    ring.push({3, 30});
    ring.push({4, 40});  // overwrites the oldest
    CHECK(ring.size() == 3);
    CHECK(ring.capacity() == 3);
    const auto p = ring.points();
    REQUIRE(p.size() == 3);
    CHECK(p[0].t_ms == 2);
    CHECK(p[1].t_ms == 3);
    CHECK(p[2].t_ms == 4);
    CHECK(ring.latest().value == 40);
}

TEST_CASE("p95 is the nearest-rank percentile", "[console]") {
    std::vector<double> none;
    CHECK(std::isnan(p95(none)));
    std::vector<double> one{0.7};
    CHECK(p95(one) == 0.7);
    std::vector<double> hundred;
    for (int i = 100; i >= 1; --i) {
        hundred.push_back(i);
    }
    CHECK(p95(hundred) == 95);
    std::vector<double> twenty;
    for (int i = 1; i <= 20; ++i) {
        twenty.push_back(i);
    }
    CHECK(p95(twenty) == 19);  // ceil(0.95 * 20) = 19th value
    std::vector<double> twenty_one(twenty);
    twenty_one.push_back(21);
    CHECK(p95(twenty_one) == 20);  // ceil(19.95) = 20th
}

TEST_CASE("only traffic counts on the charts, not the pool's own routes", "[console]") {
    for (const auto* r : {"/v1/chat/completions", "/completion", "/v1/embeddings", "/tokenize"}) {
        CHECK(counts_as_traffic(r));
    }
    for (const auto* r : {"/pool", "/health", "/metrics", "/", "/slots", "/props", "other"}) {
        CHECK_FALSE(counts_as_traffic(r));
    }
}

TEST_CASE("the sampler turns an interval's requests into one point per series", "[console]") {
    test::FakeTime time;
    double depth = 3;
    ConsoleSampler sampler(
        time, [&] { return depth; }, 900);

    // Before the first tick there is no interval: nothing is charted, and what came is dropped.
    sampler.request_done("/completion", 9.0, 100);
    CHECK(sampler.latest_json()["t_ms"].is_null());
    sampler.tick();
    CHECK(points_of(sampler.history_json(), "requests_per_s").empty());

    time.advance(seconds(2));
    sampler.request_done("/completion", 0.5, 10);
    sampler.request_done("/v1/chat/completions", 1.5, 20);
    sampler.request_done("/completion", 1.0, -1);  // no usage reported: no tokens
    sampler.request_done("/pool", 4.0, 0);         // the console's own polling: not counted
    sampler.tick();
    const auto latest = sampler.latest_json();
    CHECK(latest["t_ms"] == 2000);
    CHECK(latest["requests_per_s"] == 1.5);  // 3 requests in 2 s
    CHECK(latest["tokens_per_s"] == 15.0);   // 30 tokens in 2 s
    CHECK(latest["queue_depth"] == 3.0);
    CHECK(latest["p95_latency_s"] == 1.5);

    // A quiet second: zero rates, the depth as it is now, no latency at all (null, not 0).
    depth = 0;
    time.advance(seconds(1));
    sampler.tick();
    const auto quiet = sampler.latest_json();
    CHECK(quiet["t_ms"] == 3000);
    CHECK(quiet["requests_per_s"] == 0.0);
    CHECK(quiet["queue_depth"] == 0.0);
    CHECK(quiet["p95_latency_s"].is_null());

    // A tick with no time passed closes no interval.
    sampler.tick();
    CHECK(points_of(sampler.history_json(), "queue_depth").size() == 2);
}

TEST_CASE("the sampler's rings hold the last `capacity` ticks", "[console]") {
    test::FakeTime time;
    ConsoleSampler sampler(time, {}, 3);
    sampler.tick();
    for (int i = 1; i <= 5; ++i) {
        time.advance(seconds(1));
        for (int r = 0; r < i; ++r) {
            sampler.request_done("/completion", 0.1, 1);
        }
        sampler.tick();
    }
    const auto history = sampler.history_json();
    CHECK(history["capacity"] == 3);
    CHECK(history["now_ms"] == 5000);
    const auto points = points_of(history, "requests_per_s");
    REQUIRE(points.size() == 3);
    CHECK(points[0] == json::array({3000, 3.0}));
    CHECK(points[2] == json::array({5000, 5.0}));
}

TEST_CASE("the console page holds the status table, escaped, under a strict policy", "[console]") {
    test::FakeTime time;
    Console console(time, status_doc, {}, "1.2.3");
    test::TestExchange ex(get("/"), "192.0.2.7");
    REQUIRE(console.handle_page(ex, "/", "rid"));
    CHECK(ex.response_status() == 200);
    CHECK(ex.body().find("llama-pool <span class=\"version\">1.2.3</span>") != std::string::npos);
    CHECK(ex.body().find("<td>&lt;b&gt;x&lt;/b&gt;</td>") != std::string::npos);
    CHECK(ex.body().find("<b>x</b>") == std::string::npos);
    CHECK(ex.body().find("1 of 1 workers ready") != std::string::npos);
    CHECK(ex.body().find("@STATUS_TABLE@") == std::string::npos);
    // Nothing from another host, and no inline script the policy would have to allow.
    CHECK(ex.body().find("http://") == std::string::npos);
    CHECK(ex.body().find("https://") == std::string::npos);
    CHECK(ex.body().find("<script>") == std::string::npos);
    const auto csp = ex.headers().get("Content-Security-Policy");
    REQUIRE(csp);
    CHECK(csp->find("default-src 'none'") != std::string::npos);
    CHECK(csp->find("script-src 'self';") != std::string::npos);
    CHECK(csp->find("unsafe-inline") == std::string::npos);

    test::TestExchange js(get("/console/console.js"));
    REQUIRE(console.handle_page(js, "/console/console.js", "rid"));
    CHECK(js.response_status() == 200);
    CHECK(js.headers().get("Content-Type")->find("text/javascript") == 0);
    CHECK(js.body().find("/pool/events") != std::string::npos);

    test::TestExchange missing(get("/console/nope.js"));
    REQUIRE(console.handle_page(missing, "/console/nope.js", "rid"));
    CHECK(missing.response_status() == 404);

    test::TestExchange other(get("/v1/models"));
    CHECK_FALSE(console.handle_page(other, "/v1/models", "rid"));
}

TEST_CASE("the events route sends the history, then a frame per tick, until stopped", "[console]") {
    test::FakeTime time;
    int status_calls = 0;
    Console console(
        time,
        [&] {
            ++status_calls;
            return status_doc();
        },
        [] { return 2.0; }, "t");
    console.tick();  // the first interval starts

    test::TestExchange ex(get("/pool/events"));
    std::mutex m;
    std::condition_variable cv;
    int writes = 0;
    bool finished = false;
    ex.on_write = [&] {
        std::lock_guard lock(m);
        ++writes;
        cv.notify_all();
    };
    ex.on_finish = [&] {
        std::lock_guard lock(m);
        finished = true;
        cv.notify_all();
    };
    auto wait_for = [&](auto done) {
        std::unique_lock lock(m);
        return cv.wait_for(lock, seconds(10), done);
    };
    // Catch2's assertions are not thread-safe: the stream thread records, the test checks.
    std::atomic<bool> handled{false};
    std::thread stream([&] { handled = console.handle(ex, "/pool/events", "rid"); });

    REQUIRE(wait_for([&] { return writes == 1; }));
    CHECK(ex.response_status() == 200);
    CHECK(ex.headers().get("Content-Type") == "text/event-stream");
    CHECK(ex.body().rfind("retry: 2000\n\nevent: history\ndata: {", 0) == 0);
    CHECK(ex.body().find("\n\nevent: status\ndata: {\"totals\"") != std::string::npos);
    CHECK(console.open_streams() == 1);

    time.advance(seconds(1));
    console.tick();
    REQUIRE(wait_for([&] { return writes == 2; }));
    const auto frame = ex.body().substr(ex.body().find("event: sample"));
    CHECK(frame.rfind("event: sample\ndata: {", 0) == 0);
    CHECK(frame.find("\"queue_depth\":2.0") != std::string::npos);
    CHECK(frame.find("\"t_ms\":1000") != std::string::npos);
    CHECK(frame.find("\n\nevent: status\ndata: ") != std::string::npos);

    console.stop();
    REQUIRE(wait_for([&] { return finished; }));
    stream.join();
    CHECK(handled);
    CHECK(writes == 2);
    CHECK(console.open_streams() == 0);

    // Once stopped, a new stream is refused rather than held open.
    test::TestExchange late(get("/pool/events"));
    REQUIRE(console.handle(late, "/pool/events", "rid"));
    CHECK(late.response_status() == 503);
}

TEST_CASE("the console's /pool/* routes follow the admin rules of /pool/*", "[console][security]") {
    SeededRandom random{1};
    test::FakeTime time;
    Logger log{LogFormat::text, LogLevel::error, [](std::string_view) {}};
    PoolMetrics metrics{"test"};
    PoolConfig config;
    config.workers = 0;
    GroupSet groups{config, log, random, time, metrics};
    auto status = [](const std::string& key, const std::string& remote) {
        return [=](PoolRoutes& routes, const std::string& path) {
            HttpRequest request = get(path);
            if (!key.empty()) {
                request.headers.add("Authorization", "Bearer " + key);
            }
            test::TestExchange ex(std::move(request), remote);
            REQUIRE(routes.handle(ex, path, "rid"));
            return ex.response_status();
        };
    };
    Console console(
        time, [] { return status_doc(); }, {}, "t");
    {
        PoolRoutes routes(groups, "t", "");
        routes.set_admin_routes(&console);
        CHECK(status("", "127.0.0.1")(routes, "/pool/series") == 200);
        CHECK(status("", "192.0.2.7")(routes, "/pool/series") == 403);
        CHECK(status("", "192.0.2.7")(routes, "/pool/events") == 403);
        CHECK(status("", "127.0.0.1")(routes, "/pool/nothing") == 404);
    }
    {
        PoolRoutes routes(groups, "t", "adm");
        routes.set_admin_routes(&console);
        CHECK(status("", "127.0.0.1")(routes, "/pool/events") == 401);
        CHECK(status("nope", "127.0.0.1")(routes, "/pool/series") == 401);
        CHECK(status("adm", "192.0.2.7")(routes, "/pool/series") == 200);
    }
}
