// Hostile clients: floods of idle connections, running out of descriptors, absurd JSON,
// binary bodies, path tricks and header injection. Each gets a clean answer (or is relayed
// unchanged), the pool keeps serving everyone else, and the fake worker's request log
// (--log-requests) shows that nothing reached it that should not have.
// Slowloris, oversized heads and bodies, CL+TE, duplicate lengths and obs-fold are in
// relay_edges_test.cpp.
#include <poll.h>
#include <sys/socket.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "common/http_message.hpp"
#include "common/socket.hpp"
#include "test/support/pool_fixture.hpp"

using namespace llama_pool::test;
using json = nlohmann::json;
using namespace std::chrono_literals;
using namespace std::string_view_literals;

namespace {

const std::string kBody = R"({"prompt":"x","max_tokens":2})";

std::string post(const std::string& target, const std::string& body,
                 const std::string& extra_headers = "") {
    return "POST " + target + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + extra_headers +
           "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

std::string get(const std::string& target, const std::string& extra_headers = "") {
    return "GET " + target + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + extra_headers +
           "\r\n";
}

// What the fake worker received, one JSON object per request.
class RequestLog {
  public:
    explicit RequestLog(const std::string& name) : path_(dir_.file(name + ".requests")) {}
    const std::string& path() const { return path_; }
    std::vector<json> entries() const {
        std::vector<json> out;
        std::ifstream in(path_);
        std::string line;
        while (std::getline(in, line)) {
            out.push_back(json::parse(line));
        }
        return out;
    }
    // The requests the pool relayed for clients (they carry X-Forwarded-For; the pool's own
    // probes and warm-up do not).
    std::vector<json> relayed() const {
        std::vector<json> out;
        for (auto& e : entries()) {
            for (const auto& h : e["headers"]) {
                if (llama_pool::iequals(h[0].get<std::string>(), "X-Forwarded-For")) {
                    out.push_back(e);
                    break;
                }
            }
        }
        return out;
    }

  private:
    TempDir dir_;  // declared first: path_ is inside it
    std::string path_;
};

std::string header_value(const json& entry, const std::string& name) {
    for (const auto& h : entry["headers"]) {
        if (llama_pool::iequals(h[0].get<std::string>(), name)) {
            return h[1].get<std::string>();
        }
    }
    return {};
}

std::string response_header(const std::string& response, const std::string& name) {
    const auto head = response.substr(0, response.find("\r\n\r\n"));
    std::size_t pos = 0;
    while ((pos = head.find("\r\n", pos)) != std::string::npos) {
        pos += 2;
        const auto end = head.find("\r\n", pos);
        const auto line = head.substr(pos, end - pos);
        const auto colon = line.find(':');
        if (colon != std::string::npos && llama_pool::iequals(line.substr(0, colon), name)) {
            return line.substr(line.find_first_not_of(' ', colon + 1));
        }
    }
    return {};
}

std::string hex(const std::string& bytes) {
    static constexpr char kDigits[] = "0123456789abcdef";
    std::string out;
    for (const char c : bytes) {
        out += kDigits[static_cast<unsigned char>(c) >> 4];
        out += kDigits[static_cast<unsigned char>(c) & 15];
    }
    return out;
}

bool safe_request_id(const std::string& id) {
    return std::regex_match(id, std::regex("[A-Za-z0-9._:-]{1,128}"));
}

std::vector<llama_pool::Fd> open_idle(std::uint16_t port, int n) {
    std::vector<llama_pool::Fd> fds;
    for (int i = 0; i < n; ++i) {
        std::string error;
        auto fd = llama_pool::connect_tcp("127.0.0.1", port, std::chrono::steady_clock::now() + 5s,
                                          error);
        REQUIRE(fd.valid());
        fds.push_back(std::move(fd));
    }
    return fds;
}

void check_still_serving(PoolProcess& pool) {
    const auto r = pool.client().Post("/completion", kBody, "application/json");
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(pool.process().running());
}

}  // namespace

TEST_CASE("2000 idle client connections, and a normal request is still served",
          "[integration][hostile]") {
    // The test holds the client ends; the pool raises its own limit at start.
    const auto limit = llama_pool::raise_fd_limit();
    const int n = static_cast<int>(std::min<std::uint64_t>(2000, limit.after - 200));
    INFO("descriptor limit " << limit.after << ", idle connections " << n);
    REQUIRE(n >= 1000);
    PoolProcess pool(fake_pool_args(1, {"--max-connections", "2100", "--head-timeout", "60"}));
    REQUIRE(pool.wait_ready(1, 20s));
    auto idle = open_idle(pool.port(), n);
    // Every one of them is accepted and held open (a descriptor each in the pool), none
    // answered, they cost no thread each (they wait in epoll), and the next client is served.
    const auto proc = "/proc/" + std::to_string(pool.process().pid());
    REQUIRE(wait_until(
        [&] {
            const auto fds = std::distance(std::filesystem::directory_iterator(proc + "/fd"),
                                           std::filesystem::directory_iterator());
            return fds > n;
        },
        20s, 50ms));
    std::ifstream status(proc + "/status");
    int threads = 0;
    for (std::string line; std::getline(status, line);) {
        if (line.rfind("Threads:", 0) == 0) {
            threads = std::stoi(line.substr(8));
        }
    }
    CHECK(threads > 0);
    CHECK(threads < n / 4);  // a burst of accepts starts some, far fewer than connections
    const auto r = raw_exchange(pool.port(), post("/completion", kBody), 10s);
    CHECK(raw_status(r) == 200);
    int answered = 0;
    for (const auto& fd : idle) {
        pollfd p{fd.get(), POLLIN, 0};
        answered += ::poll(&p, 1, 0) > 0 ? 1 : 0;
    }
    CHECK(answered == 0);
    idle.clear();
    check_still_serving(pool);
}

TEST_CASE("beyond max_connections a client gets a 503 at once, not a hang",
          "[integration][hostile]") {
    PoolProcess pool(fake_pool_args(1, {"--max-connections", "32", "--head-timeout", "60"}));
    REQUIRE(pool.wait_ready(1, 20s));
    auto idle = open_idle(pool.port(), 32);
    // A connect() returns before the pool has accepted: wait until the pool holds them all
    // (the next connection is refused), then every further one must be refused at once.
    // wait_ready's last status request may still count for a moment after its answer came
    // (the pool closes a Connection: close connection after sending), and an idle connection
    // accepted in that moment is refused: one the pool answered (a 503, then the close) is
    // replaced by a new one.
    // The pool answers refusals in accept order, and the idle connections came first: once a
    // probe is refused, any idle one refused before it is readable already.
    const auto replace_refused = [&] {
        bool replaced = false;
        for (auto& fd : idle) {
            pollfd p{fd.get(), POLLIN, 0};
            if (::poll(&p, 1, 0) > 0) {
                fd = std::move(open_idle(pool.port(), 1).front());
                replaced = true;
            }
        }
        return replaced;
    };
    REQUIRE(wait_until(
        [&] {
            const bool refused =
                raw_status(raw_exchange(pool.port(), post("/completion", kBody), 5s)) == 503;
            return !replace_refused() && refused;
        },
        10s));
    for (int i = 0; i < 20; ++i) {
        const auto r = raw_exchange(pool.port(), post("/completion", kBody), 5s);
        REQUIRE(raw_status(r) == 503);
        CHECK(r.find("too many open connections") != std::string::npos);
        CHECK(r.find("\"source\":\"llama-pool\"") != std::string::npos);
    }
    idle.clear();
    REQUIRE(wait_until(
        [&] { return raw_status(raw_exchange(pool.port(), get("/health"), 2s)) == 200; }, 10s));
    check_still_serving(pool);
}

TEST_CASE("out of file descriptors a client gets a 503 at once, not a hang",
          "[integration][hostile]") {
    // Regression: accept() failing with EMFILE left the connection in the backlog (its client
    // hung until it gave up) and the accept loop spinning on a listener that stayed ready.
    PoolProcess pool(fake_pool_args(1, {"--head-timeout", "60"}),
                     {"/bin/sh", "-c", "ulimit -n 96 && exec \"$0\" \"$@\""});
    REQUIRE(pool.wait_ready(1, 20s));
    auto idle = open_idle(pool.port(), 120);  // more than the pool has descriptors for
    // A connect() returns before the pool has accepted: wait until it has run out. Under
    // ThreadSanitizer, with other tests running, accepting them all took over 10 s once.
    REQUIRE(wait_until(
        [&] {
            return raw_status(raw_exchange(pool.port(), post("/completion", kBody), 5s)) == 503;
        },
        30s));
    const auto started = std::chrono::steady_clock::now();
    const auto r = raw_exchange(pool.port(), post("/completion", kBody), 10s);
    CHECK(raw_status(r) == 503);
    CHECK(r.find("out of file descriptors") != std::string::npos);
    CHECK(std::chrono::steady_clock::now() - started < 5s);
    idle.clear();
    REQUIRE(wait_until(
        [&] {
            return raw_status(raw_exchange(pool.port(), post("/completion", kBody), 2s)) == 200;
        },
        10s));
}

TEST_CASE("absurdly nested JSON is relayed, and the pool neither crashes nor builds it",
          "[integration][hostile]") {
    // The pool parses bodies for prefix affinity and replies for token counts.
    const std::string deep = std::string(100000, '[') + std::string(100000, ']');
    const std::string balanced = R"({"prompt":"x","max_tokens":2,"x":)" + deep + "}";
    const std::string unbalanced = R"({"prompt":"x","x":)" + std::string(100000, '[');
    for (const std::string balancer : {"least-loaded", "prefix-affinity"}) {
        INFO(balancer);
        PoolProcess pool(fake_pool_args(1, {"--balancer", balancer}));
        REQUIRE(pool.wait_ready(1, 20s));
        CHECK(raw_status(raw_exchange(pool.port(), post("/completion", balanced), 30s)) == 200);
        // The worker's own answer to a body that is not JSON, passed on, not retried.
        const auto r = raw_exchange(pool.port(), post("/completion", unbalanced), 30s);
        CHECK(raw_status(r) == 500);
        CHECK(r.find("\"source\":\"llama-pool\"") == std::string::npos);
        check_still_serving(pool);
    }
}

TEST_CASE("invalid UTF-8 and binary bodies reach the worker byte for byte and eject nothing",
          "[integration][hostile]") {
    RequestLog log("binary");
    PoolProcess pool(
        fake_pool_args(1, {"--breaker-failures", "2"}, {"--log-requests", log.path()}));
    REQUIRE(pool.wait_ready(1, 20s));
    std::string all_bytes;
    for (int c = 0; c < 256; ++c) {
        all_bytes += static_cast<char>(c);
    }
    const std::vector<std::string> bodies = {
        all_bytes, std::string("{\"prompt\":\"\xff\xfe\xc0\xaf\",\"max_tokens\":2}"),
        std::string("{\"prompt\":\"a\0b\",\"max_tokens\":2}"sv), std::string(3000, '\x80')};
    for (const auto& body : bodies) {
        const auto r = raw_exchange(pool.port(), post("/completion", body), 10s);
        CHECK(raw_status(r) == 500);  // the worker's answer to a body that is not JSON
        CHECK(r.find("invalid JSON") != std::string::npos);
    }
    const auto relayed = log.relayed();
    REQUIRE(relayed.size() == bodies.size());  // once each: no retry of the client's error
    for (std::size_t i = 0; i < bodies.size(); ++i) {
        CHECK(relayed[i]["body_length"] == bodies[i].size());
        CHECK(relayed[i]["body_hex_prefix"] == hex(bodies[i]));
    }
    CHECK(pool.status()["workers"][0]["breaker"] == "closed");
    check_still_serving(pool);
}

TEST_CASE("path tricks never reach the admin routes without the key, nor a worker altered",
          "[integration][hostile]") {
    RequestLog log("paths");
    PoolProcess pool(fake_pool_args(1, {"--admin-key", "adm"}, {"--log-requests", log.path()}));
    REQUIRE(wait_until(
        [&] { return raw_status(raw_exchange(pool.port(), get("/health"), 2s)) == 200; }, 20s));
    struct Case {
        std::string request;
        int status;
        std::string reaches;  // the target the worker must get; empty: nothing reaches it
    };
    const std::vector<Case> cases = {
        {get("/../pool/status"), 401, ""},
        {get("/v1/../pool/status"), 401, ""},
        {get("/%2e%2e/pool/status"), 401, ""},
        {post("/%2E%2E/pool/restart", ""), 401, ""},
        {get("/.%2e/pool/status"), 401, ""},
        {get("//pool/status"), 401, ""},
        {get("/pool/./status"), 401, ""},
        {get("/%70ool/status"), 401, ""},
        {post("/completion/../pool/restart", ""), 401, ""},
        {post("/pool/workers/0/../../restart", ""), 401, ""},
        {get("/pool/workers/0/log/%2e%2e/%2e%2e/status"), 401, ""},
        {get("/%00"), 400, ""},
        {get("/completion%00"), 400, ""},
        {get("/pool/status%00"), 400, ""},
        {get("/%2e%2e%2f%00"), 400, ""},
        {post("/completion%0d%0aX-Injected:%201", kBody), 400, ""},
        {post("/v1/../completion", kBody), 200, "/completion"},
        {post("/%63ompletion?a=/../b", kBody), 200, "/completion?a=/../b"},
        {get("/pool%2fstatus"), 404, "/pool%2fstatus"},
        {get("/..%2f..%2fpool/status"), 404, "/..%2f..%2fpool/status"},
    };
    std::vector<std::string> expected_targets;
    for (const auto& c : cases) {
        const auto r = raw_exchange(pool.port(), c.request, 10s);
        INFO(c.request.substr(0, c.request.find("\r\n")) << " -> " << r.substr(0, 200));
        CHECK(raw_status(r) == c.status);
        if (!c.reaches.empty()) {
            expected_targets.push_back(c.reaches);
        }
    }
    std::vector<std::string> targets;
    for (const auto& e : log.relayed()) {
        targets.push_back(e["target"].get<std::string>());
    }
    CHECK(targets == expected_targets);
    // With the key, the same trick reaches the admin route: it is routing, not a blocklist.
    const auto keyed =
        raw_exchange(pool.port(), get("/%2e%2e/pool/status", "X-Api-Key: adm\r\n"), 10s);
    CHECK(raw_status(keyed) == 200);
    check_still_serving(pool);
}

TEST_CASE("X-Request-Id is never echoed or logged unless it is safe", "[integration][hostile]") {
    RequestLog log("request-id");
    PoolProcess pool(fake_pool_args(1, {}, {"--log-requests", log.path()}));
    REQUIRE(pool.wait_ready(1, 20s));
    const std::string long_id(10000, 'a');
    struct Case {
        std::string value;
        bool kept;
    };
    const std::vector<Case> cases = {
        {"ok-id_1.2:3", true},
        {long_id, false},
        {"caf\xc3\xa9", false},
        {"\xff\xfe", false},
        {"a%0d%0aX-Injected:%201", false},
        {"id with spaces", false},
        {"<script>", false},
    };
    for (const auto& c : cases) {
        const auto r = raw_exchange(
            pool.port(), post("/completion", kBody, "X-Request-Id: " + c.value + "\r\n"), 10s);
        INFO(c.value.substr(0, 40));
        REQUIRE(raw_status(r) == 200);
        const auto echoed = response_header(r, "X-Request-Id");
        CHECK(safe_request_id(echoed));
        CHECK((echoed == c.value) == c.kept);
        CHECK(response_header(r, "X-Injected").empty());
    }
    // A bare CR in the value is refused before anything else happens.
    const auto cr = raw_exchange(
        pool.port(), post("/completion", kBody, "X-Request-Id: a\rX-Injected: 1\r\n"), 10s);
    CHECK(raw_status(cr) == 400);
    CHECK(response_header(cr, "X-Injected").empty());
    // The worker got only safe ids, and the pool's log holds none of the unsafe values.
    const auto relayed = log.relayed();
    REQUIRE(relayed.size() == cases.size());
    for (const auto& e : relayed) {
        CHECK(safe_request_id(header_value(e, "X-Request-Id")));
    }
    const auto output = pool.process().output();
    CHECK(output.find("ok-id_1.2:3") != std::string::npos);
    CHECK(output.find(long_id.substr(0, 200)) == std::string::npos);
    CHECK(output.find("caf\xc3\xa9") == std::string::npos);
    CHECK(output.find("\xff\xfe") == std::string::npos);
    CHECK(output.find("X-Injected") == std::string::npos);
    CHECK(output.find("<script>") == std::string::npos);
    check_still_serving(pool);
}
