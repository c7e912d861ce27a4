// RFC 9112 / RFC 9110 rules that need a live pool: what a client gets on the wire, what a
// worker receives (the fake worker's --log-requests), and what the connection does after.
// The rows of the table in docs/RELIABILITY.md ("HTTP conformance") name these tests; the
// parser's own rules are in test/unit/http_rfc9112_test.cpp.
#include <stdlib.h>
#include <sys/socket.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/http_message.hpp"
#include "common/socket.hpp"
#include "test/support/pool_fixture.hpp"

using namespace llama_pool::test;
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

const std::string kBody = R"({"prompt":"x","max_tokens":2})";

// What the fake worker received for clients (entries with X-Forwarded-For; the pool's own
// probes have none), from a log in a directory of this test's own.
class WorkerLog {
  public:
    WorkerLog() {
        auto pattern = (std::filesystem::temp_directory_path() / "llama-pool-rfc-XXXXXX").string();
        REQUIRE(::mkdtemp(pattern.data()) != nullptr);
        dir_ = pattern;
    }
    ~WorkerLog() {
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }
    std::string path() const { return (dir_ / "requests.jsonl").string(); }
    std::vector<json> relayed() const {
        std::vector<json> out;
        std::ifstream in(path());
        for (std::string line; std::getline(in, line);) {
            auto e = json::parse(line);
            if (!values(e, "X-Forwarded-For").empty()) {
                out.push_back(std::move(e));
            }
        }
        return out;
    }
    static std::vector<std::string> values(const json& entry, const std::string& name) {
        std::vector<std::string> out;
        for (const auto& h : entry["headers"]) {
            if (llama_pool::iequals(h[0].get<std::string>(), name)) {
                out.push_back(h[1].get<std::string>());
            }
        }
        return out;
    }

  private:
    std::filesystem::path dir_;
};

std::string post(const std::string& head_lines, const std::string& body = kBody) {
    return "POST /completion HTTP/1.1\r\n" + head_lines +
           "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

// The status lines in a raw reply, in order: one per response the pool sent.
std::vector<int> statuses(const std::string& raw) {
    std::vector<int> out;
    for (std::size_t pos = raw.find("HTTP/1.1 "); pos != std::string::npos;
         pos = raw.find("HTTP/1.1 ", pos + 1)) {
        if (pos == 0 || raw.compare(pos - 2, 2, "\r\n") == 0 || raw[pos - 1] == '}') {
            out.push_back(std::stoi(raw.substr(pos + 9, 3)));
        }
    }
    return out;
}

bool pool_made(const std::string& raw) {
    return raw.find("\"source\":\"llama-pool\"") != std::string::npos;
}

}  // namespace

TEST_CASE("RFC 9112 §3.2: no Host or two Hosts get the pool's 400 and reach no worker",
          "[integration][rfc9112]") {
    WorkerLog log;
    PoolProcess pool(fake_pool_args(1, {}, {"--log-requests", log.path()}));
    REQUIRE(pool.wait_ready(1, 20s));
    struct Case {
        std::string request;
        int status;
    };
    const std::vector<Case> cases = {
        {post("Connection: close\r\n"), 400},
        {post("Host: a\r\nHost: a\r\nConnection: close\r\n"), 400},
        {post("Host: a\r\nConnection: close\r\nhost: b\r\n"), 400},
        {post("Host: a b\r\nConnection: close\r\n"), 400},
        {post("Host: user@a\r\nConnection: close\r\n"), 400},
        {"GET /health HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400},
        // HTTP/1.0 needs no Host.
        {"POST /completion HTTP/1.0\r\nContent-Length: " + std::to_string(kBody.size()) +
             "\r\n\r\n" + kBody,
         200},
    };
    for (const auto& c : cases) {
        const auto r = raw_exchange(pool.port(), c.request, 10s);
        INFO(c.request.substr(0, c.request.find("\r\n\r\n")) << " -> " << r.substr(0, 300));
        CHECK(raw_status(r) == c.status);
        if (c.status == 400) {
            CHECK(pool_made(r));
            CHECK(r.find("Host header field") != std::string::npos);
            CHECK(r.find("Connection: close") != std::string::npos);
        }
    }
    CHECK(log.relayed().size() == 1);
}

TEST_CASE(
    "RFC 9110 §7.2, §7.6: a worker gets a Host of its own, the pool in Via, and an "
    "origin-form target",
    "[integration][rfc9112]") {
    WorkerLog log;
    PoolProcess pool(fake_pool_args(1, {"--admin-key", "adm"}, {"--log-requests", log.path()}));
    // wait_ready reads /pool/status, which now needs the key; the pool's /health does not.
    REQUIRE(wait_until(
        [&] {
            return raw_status(raw_exchange(pool.port(),
                                           "GET /health HTTP/1.1\r\nHost: x\r\nConnection: "
                                           "close\r\n\r\n",
                                           2s)) == 200;
        },
        20s));
    // Absolute-form (RFC 9112 §3.2.2): accepted, routed on its path, relayed in origin-form.
    const auto r = raw_exchange(
        pool.port(),
        "POST http://elsewhere.example/completion?a=1 HTTP/1.1\r\nHost: x\r\nVia: 1.0 front\r\n"
        "Connection: close, X-Secret\r\nX-Secret: 1\r\nUpgrade: h2c\r\nKeep-Alive: 5\r\n"
        "Content-Length: " +
            std::to_string(kBody.size()) + "\r\n\r\n" + kBody,
        10s);
    CHECK(raw_status(r) == 200);
    // Its path still meets the pool's own routes and their key.
    const auto admin = raw_exchange(
        pool.port(),
        "GET http://x/%2e%2e/pool/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 10s);
    CHECK(raw_status(admin) == 401);
    const auto relayed = log.relayed();
    REQUIRE(relayed.size() == 1);
    CHECK(relayed[0]["target"] == "/completion?a=1");
    const auto hosts = WorkerLog::values(relayed[0], "Host");
    REQUIRE(hosts.size() == 1);
    CHECK(hosts[0].rfind("127.0.0.1:", 0) == 0);
    CHECK(hosts[0].size() > 10);
    // RFC 9110 §7.6.1: what Connection names, and Connection itself, stay on the client's hop;
    // so do Upgrade (§7.8) and Keep-Alive.
    for (const auto* name : {"X-Secret", "Connection", "Upgrade", "Keep-Alive"}) {
        INFO(name);
        CHECK(WorkerLog::values(relayed[0], name).empty());
    }
    // RFC 9110 §7.6.3: the received Via first, then the pool's own, as the list requires.
    CHECK(WorkerLog::values(relayed[0], "Via") ==
          std::vector<std::string>{"1.0 front", "1.1 llama-pool"});
}

TEST_CASE("RFC 9112 §9.3, §9.6: nothing is read after an error or after Connection: close",
          "[integration][rfc9112]") {
    PoolProcess pool(fake_pool_args(1));
    REQUIRE(pool.wait_ready(1, 20s));
    const std::string next = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    // A request the pool refuses, a valid one pipelined behind it: one answer, then the close.
    for (const std::string bad :
         {"GET /health HTTP/1.1\r\n\r\n", "GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
          "POST /completion HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
          "POST /completion HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
          "0\r\n\r\n",
          "POST /completion HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
          "2;a\rb\r\n{}\r\n0\r\n\r\n",
          // Content-Length beside Transfer-Encoding (§6.1), two lengths that differ (§6.3):
          // whichever a lenient reader picks, the bytes after the head are never a request.
          "POST /completion HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
          "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
          "POST /completion HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 2\r\n"
          "\r\n{}"}) {
        const auto r = raw_exchange(pool.port(), bad + next, 10s);
        INFO(bad << " -> " << r.substr(0, 300));
        CHECK(statuses(r) == std::vector<int>{400});
        CHECK(pool_made(r));
    }
    // Connection: close ends the connection after its response (§9.6).
    const auto closed = raw_exchange(
        pool.port(), "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" + next, 10s);
    CHECK(statuses(closed) == std::vector<int>{200});
    // Pipelined requests are answered in order (§9.3.2).
    const auto both = raw_exchange(
        pool.port(), next + "GET /no-such-route HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        10s);
    CHECK(statuses(both) == std::vector<int>{200, 404});
}

TEST_CASE("RFC 9110 §7.6.2, §9.3: OPTIONS, Max-Forwards, TRACE and CONNECT",
          "[integration][rfc9112]") {
    WorkerLog log;
    PoolProcess pool(fake_pool_args(1, {}, {"--log-requests", log.path()}));
    REQUIRE(pool.wait_ready(1, 20s));
    const auto star = raw_exchange(
        pool.port(), "OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 10s);
    CHECK(raw_status(star) == 200);
    CHECK(star.find("Allow: ") != std::string::npos);
    // Max-Forwards: 0 is answered here; a larger value is forwarded one lower.
    const auto zero = raw_exchange(
        pool.port(),
        "OPTIONS /completion HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\nConnection: close\r\n\r\n",
        10s);
    CHECK(raw_status(zero) == 200);
    CHECK(zero.find("Allow: ") != std::string::npos);
    // /v1/models: the fake worker answers it 200 whatever the method, so nothing is retried.
    raw_exchange(
        pool.port(),
        "OPTIONS /v1/models HTTP/1.1\r\nHost: x\r\nMax-Forwards: 5\r\nConnection: close\r\n\r\n",
        10s);
    // TRACE would echo credentials back; CONNECT asks for a tunnel. Neither is offered.
    const auto trace =
        raw_exchange(pool.port(), "TRACE / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 10s);
    CHECK(raw_status(trace) == 501);
    CHECK(pool_made(trace));
    const auto connect = raw_exchange(
        pool.port(), "CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\nConnection: close\r\n\r\n", 10s);
    CHECK(raw_status(connect) == 501);
    CHECK(pool_made(connect));
    const auto relayed = log.relayed();
    INFO(json(relayed).dump());
    REQUIRE(relayed.size() == 1);
    CHECK(relayed[0]["method"] == "OPTIONS");
    CHECK(WorkerLog::values(relayed[0], "Max-Forwards") == std::vector<std::string>{"4"});
}

TEST_CASE("RFC 9112 §6.3, §8 and RFC 9110 §10.1.1: a body cut short, Expect in HTTP/1.0",
          "[integration][rfc9112]") {
    WorkerLog log;
    PoolProcess pool(fake_pool_args(1, {}, {"--log-requests", log.path()}));
    REQUIRE(pool.wait_ready(1, 20s));
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    char buf[4096];
    std::size_t n = 0;
    {
        // The client closes its side 10 bytes into a 100-byte body: the request is
        // incomplete, so nothing is relayed and the connection is closed (§6.3 rule 6).
        std::string error;
        auto fd = llama_pool::connect_tcp("127.0.0.1", pool.port(), deadline, error);
        REQUIRE(fd.valid());
        const auto whole = post("Host: x\r\n", std::string(100, 'a'));
        REQUIRE(llama_pool::write_all(fd.get(), whole.substr(0, whole.size() - 90), deadline) ==
                llama_pool::IoStatus::ok);
        ::shutdown(fd.get(), SHUT_WR);
        std::string got;
        while (llama_pool::read_some(fd.get(), buf, sizeof buf, n, deadline) ==
               llama_pool::IoStatus::ok) {
            got.append(buf, n);
        }
        CHECK(got.find("HTTP/1.1 2") == std::string::npos);
    }
    {
        // A 100-continue expectation in HTTP/1.0 is ignored: no interim 100 while the pool
        // waits for the body, then the final answer alone.
        std::string error;
        auto fd = llama_pool::connect_tcp("127.0.0.1", pool.port(), deadline, error);
        REQUIRE(fd.valid());
        REQUIRE(llama_pool::write_all(fd.get(),
                                      "POST /completion HTTP/1.0\r\nExpect: 100-continue\r\n"
                                      "Content-Length: " +
                                          std::to_string(kBody.size()) + "\r\n\r\n",
                                      deadline) == llama_pool::IoStatus::ok);
        CHECK(llama_pool::read_some(fd.get(), buf, sizeof buf, n,
                                    std::chrono::steady_clock::now() + 300ms) ==
              llama_pool::IoStatus::timeout);
        REQUIRE(llama_pool::write_all(fd.get(), kBody, deadline) == llama_pool::IoStatus::ok);
        std::string got;
        while (llama_pool::read_some(fd.get(), buf, sizeof buf, n, deadline) ==
               llama_pool::IoStatus::ok) {
            got.append(buf, n);
        }
        CHECK(raw_status(got) == 200);
        CHECK(got.find("100 Continue") == std::string::npos);
    }
    // An expectation other than 100-continue may be refused (§10.1.1): it is, before the body.
    const auto other = raw_exchange(
        pool.port(), post("Host: x\r\nExpect: something-else\r\nConnection: close\r\n"), 10s);
    CHECK(raw_status(other) == 417);
    CHECK(pool_made(other));
    CHECK(log.relayed().size() == 1);
}

TEST_CASE(
    "RFC 9110 §6.2, §5.3: a worker gets the pool's own HTTP version and same-name fields in "
    "order",
    "[integration][rfc9112]") {
    WorkerLog log;
    PoolProcess pool(fake_pool_args(1, {}, {"--log-requests", log.path()}));
    REQUIRE(pool.wait_ready(1, 20s));
    const auto r = raw_exchange(pool.port(),
                                "POST /completion HTTP/1.0\r\nX-Order: b\r\nX-Other: 1\r\n"
                                "X-Order: a\r\nX-Order: c, d\r\nContent-Length: " +
                                    std::to_string(kBody.size()) + "\r\n\r\n" + kBody,
                                10s);
    CHECK(raw_status(r) == 200);
    const auto relayed = log.relayed();
    REQUIRE(relayed.size() == 1);
    // An intermediary sends its own version (§6.2), whatever the client spoke; Via keeps the
    // client's (§7.6.3).
    CHECK(relayed[0]["version_minor"] == 1);
    CHECK(WorkerLog::values(relayed[0], "Via") == std::vector<std::string>{"1.0 llama-pool"});
    // A proxy must not change the order of a field's lines (§5.3): b, a, "c, d".
    CHECK(WorkerLog::values(relayed[0], "X-Order") == std::vector<std::string>{"b", "a", "c, d"});
    // RFC 9112 §6.1: an HTTP/1.0 client gets no Transfer-Encoding, even for a stream of
    // unknown length; the close ends it.
    const std::string stream = R"({"prompt":"x","max_tokens":3,"stream":true})";
    const auto streamed = raw_exchange(pool.port(),
                                       "POST /completion HTTP/1.0\r\nContent-Length: " +
                                           std::to_string(stream.size()) + "\r\n\r\n" + stream,
                                       10s);
    INFO(streamed);
    CHECK(raw_status(streamed) == 200);
    CHECK(streamed.find("Transfer-Encoding") == std::string::npos);
    CHECK(streamed.find("Connection: close") != std::string::npos);
    CHECK(streamed.find("data: ") != std::string::npos);
}

TEST_CASE(
    "RFC 9110 §15.2, §7.6.1 and RFC 9112 §6.3: a worker's interim responses, hop-by-hop "
    "fields and a length beside chunked coding",
    "[integration][rfc9112]") {
    TempDir dir;
    const auto faults = dir.file("faults");
    std::ofstream(faults) << "";
    PoolProcess pool(fake_pool_args(1, {}, {"--fault-file", faults}));
    REQUIRE(pool.wait_ready(1, 20s));
    const auto port = pool.status()["workers"][0]["port"].get<int>();
    for (const int code : {100, 102, 103}) {
        std::ofstream(faults) << port << " interim " << code << "\n";
        for (const auto& version : {"1.1", "1.0"}) {
            const auto r = raw_exchange(pool.port(),
                                        std::string("POST /completion HTTP/") + version +
                                            "\r\nHost: x\r\nConnection: close\r\n"
                                            "Content-Length: " +
                                            std::to_string(kBody.size()) + "\r\n\r\n" + kBody,
                                        10s);
            INFO(code << " HTTP/" << version << " -> " << r);
            // The interim answer is read past, not taken for the reply, and not passed on
            // (an HTTP/1.0 client must never get one); the reply's chunks are what counts,
            // not the length beside them.
            CHECK(statuses(r) == std::vector<int>{200});
            CHECK(r.find("interim-ok") != std::string::npos);
            CHECK(r.find("Link:") == std::string::npos);
            // What the worker's Connection named, and the hop-by-hop fields, stay on its hop.
            CHECK(r.find("X-Hop") == std::string::npos);
            CHECK(r.find("Keep-Alive") == std::string::npos);
            CHECK(r.find("Content-Length: 3\r\n") == std::string::npos);
        }
    }
    // A 101 was never asked for (no Upgrade is forwarded): the reply is a broken one, and
    // the client gets the pool's error (a 503 once no other worker is left to try), never a
    // switched connection.
    std::ofstream(faults) << port << " interim 101\n";
    const auto r = raw_exchange(pool.port(), post("Host: x\r\nConnection: close\r\n"), 10s);
    INFO(r);
    CHECK(statuses(r) == std::vector<int>{503});
    CHECK(pool_made(r));
    CHECK(r.find("101 Switching Protocols, never asked for") != std::string::npos);
}
