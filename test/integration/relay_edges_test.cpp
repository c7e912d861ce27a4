// How the relay treats requests at the edges of HTTP, and workers that break, with fake
// workers behind the pool.
#include <signal.h>
#include <sys/socket.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/socket.hpp"
#include "test/support/pool_fixture.hpp"

using namespace llama_pool::test;
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

std::vector<std::string> pool_args(std::vector<std::string> extra,
                                   std::vector<std::string> worker_args = {}) {
    return fake_pool_args(1, std::move(extra), std::move(worker_args));
}

const std::string kBody = R"({"prompt":"Hello","max_tokens":2})";

std::string post(const std::string& extra_headers, const std::string& body) {
    return "POST /completion HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + extra_headers +
           "\r\n" + body;
}

}  // namespace

TEST_CASE("edge requests are handled like a careful server would", "[integration]") {
    PoolProcess pool(pool_args(
        {"--max-body-bytes", "2048", "--max-header-bytes", "2048", "--head-timeout", "0.5"}));
    REQUIRE(pool.wait_ready(1, 20s));
    const auto port = pool.port();

    SECTION("a chunked request body is de-chunked and relayed") {
        const auto r = raw_exchange(
            port,
            post("Transfer-Encoding: chunked\r\n",
                 "10\r\n{\"prompt\":\"Hel\",\r\n11\r\n\"max_tokens\":2}  \r\n0\r\n\r\n"),
            5s);
        CHECK(raw_status(r) == 200);
        CHECK(r.find("tok1") != std::string::npos);
    }
    SECTION("a doubled slash reaches the same route") {
        const auto r = raw_exchange(
            port,
            "POST //completion HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: " +
                std::to_string(kBody.size()) + "\r\n\r\n" + kBody,
            5s);
        CHECK(raw_status(r) == 200);
    }
    SECTION("Expect: 100-continue gets an interim 100 before the body is sent") {
        const auto deadline = std::chrono::steady_clock::now() + 5s;
        std::string error;
        auto fd = llama_pool::connect_tcp("127.0.0.1", port, deadline, error);
        REQUIRE(fd.valid());
        llama_pool::write_all(fd.get(),
                              "POST /completion HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                              "Expect: 100-continue\r\nContent-Length: " +
                                  std::to_string(kBody.size()) + "\r\n\r\n",
                              deadline);
        std::string got;
        char buf[4096];
        std::size_t n = 0;
        while (got.find("\r\n\r\n") == std::string::npos &&
               llama_pool::read_some(fd.get(), buf, sizeof buf, n, deadline) ==
                   llama_pool::IoStatus::ok) {
            got.append(buf, n);
        }
        CHECK(got == "HTTP/1.1 100 Continue\r\n\r\n");
        llama_pool::write_all(fd.get(), kBody, deadline);
        while (llama_pool::read_some(fd.get(), buf, sizeof buf, n, deadline) ==
               llama_pool::IoStatus::ok) {
            got.append(buf, n);
        }
        CHECK(raw_status(got.substr(25)) == 200);
    }
    SECTION("a body over the limit gets 413") {
        const auto big = std::string(4096, 'a');
        const auto r = raw_exchange(port, post("Content-Length: 4096\r\n", big), 5s);
        CHECK(raw_status(r) == 413);
        CHECK(r.find("invalid_request_error") != std::string::npos);
    }
    SECTION("a chunked body over the limit gets 413") {
        std::string chunks;
        for (int i = 0; i < 5; ++i) {
            chunks += "400\r\n" + std::string(1024, 'a') + "\r\n";
        }
        const auto r =
            raw_exchange(port, post("Transfer-Encoding: chunked\r\n", chunks + "0\r\n\r\n"), 5s);
        CHECK(raw_status(r) == 413);
    }
    SECTION("headers over the limit get 431") {
        const auto r = raw_exchange(
            port, post("X-Big: " + std::string(4096, 'b') + "\r\nContent-Length: 2\r\n", "{}"), 5s);
        CHECK(raw_status(r) == 431);
    }
    SECTION("a client too slow to send its head gets 408") {
        const auto r = raw_exchange(port, "POST /completion HTTP/1.1\r\nHost: x\r\n", 5s);
        CHECK(raw_status(r) == 408);
    }
    SECTION("Content-Length with Transfer-Encoding is refused") {
        const auto r = raw_exchange(
            port, post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"), 5s);
        CHECK(raw_status(r) == 400);
    }
    SECTION("two differing Content-Lengths are refused") {
        const auto r =
            raw_exchange(port, post("Content-Length: 2\r\nContent-Length: 3\r\n", "{}x"), 5s);
        CHECK(raw_status(r) == 400);
    }
    SECTION("obsolete line folding is refused") {
        const auto r =
            raw_exchange(port, post("X-A: 1\r\n folded\r\nContent-Length: 2\r\n", "{}"), 5s);
        CHECK(raw_status(r) == 400);
    }
    SECTION("a Connection: close client gets its answer and a closed connection") {
        const auto r = raw_exchange(
            port, post("Content-Length: " + std::to_string(kBody.size()) + "\r\n", kBody), 5s);
        CHECK(raw_status(r) == 200);
        CHECK(r.find("Connection: close") != std::string::npos);
    }
    // Whatever was refused, the pool goes on serving.
    CHECK(pool.client().Get("/health")->status == 200);
}

TEST_CASE("1000 sequential requests reuse at most capacity upstream connections", "[integration]") {
    PoolProcess pool(pool_args({"--parallel", "2"}, {"--tokens-per-second", "100000"}));
    REQUIRE(pool.wait_ready(1, 20s));
    auto c = pool.client();
    c.set_keep_alive(true);
    for (int i = 0; i < 1000; ++i) {
        const auto r =
            c.Post("/completion", R"({"prompt":"x","max_tokens":1})", "application/json");
        REQUIRE(r);
        REQUIRE(r->status == 200);
    }
    const auto opened = pool.status()["workers"][0]["upstream_connections_opened"].get<int>();
    INFO("connections opened to the worker: " << opened);
    CHECK(opened >= 1);
    CHECK(opened <= 2);
}

TEST_CASE("a worker killed mid-stream ends the client's stream cleanly", "[integration]") {
    PoolProcess pool(pool_args({"--stream-idle-timeout", "30"}, {"--tokens-per-second", "20"}));
    REQUIRE(pool.wait_ready(1, 20s));
    const auto pid = pool.worker_pids().at(0);
    std::string received;
    std::mutex m;
    auto received_so_far = [&] {
        std::lock_guard lock(m);
        return received;
    };
    bool saw_tokens = false;  // Catch assertions stay on the test's thread
    std::thread killer([&] {
        saw_tokens = wait_until([&] { return received_so_far().find("tok3") != std::string::npos; },
                                10s, 5ms);
        ::kill(pid, SIGKILL);
    });
    auto c = pool.client(std::chrono::seconds(20));
    const auto started = std::chrono::steady_clock::now();
    const auto res =
        stream_post(c, "/completion", R"({"prompt":"x","max_tokens":200,"stream":true})",
                    [&](std::string_view piece) {
                        std::lock_guard lock(m);
                        received.append(piece);
                    });
    const bool ok = res.status != 0;
    killer.join();
    CHECK(saw_tokens);
    // A complete (chunked-terminated) response with what was produced, not an error or a hang.
    CHECK(ok);
    CHECK(res.status == 200);
    CHECK(received.find("tok3") != std::string::npos);
    CHECK(received.find("\"stop\":true") == std::string::npos);
    // It ends with the pool's error event, so the client can tell it was cut.
    const auto last = received.rfind("data: ");
    REQUIRE(last != std::string::npos);
    CHECK(received.substr(last).find("\"source\":\"llama-pool\"") != std::string::npos);
    CHECK(received.size() >= 2);
    CHECK(received.substr(received.size() - 2) == "\n\n");
    CHECK(std::chrono::steady_clock::now() - started < 10s);
}

TEST_CASE("a worker whose completions fail while /health stays green is replaced",
          "[integration]") {
    PoolProcess pool(pool_args({"--idle-probe-interval", "1", "--health-failures", "2"},
                               {"--fail-status", "500", "--fail-after", "1"}));
    REQUIRE(pool.wait_ready(1, 20s));
    const auto first_pid = pool.worker_pids().at(0);
    REQUIRE(wait_until(
        [&] {
            const auto w = pool.status()["workers"][0];
            return w["restarts"].get<int>() >= 1;
        },
        20s));
    const auto reason = pool.status()["workers"][0]["last_exit_reason"].get<std::string>();
    CHECK(reason.find("inference probe failed") != std::string::npos);
    CHECK_FALSE(process_alive(first_pid));
}

TEST_CASE("pool /slots and /props aggregate the workers", "[integration]") {
    auto args = pool_args({"--parallel", "3"});
    args[1] = "2";  // two workers
    PoolProcess pool(args);
    REQUIRE(pool.wait_ready(2, 20s));
    auto c = pool.client();
    const auto slots = json::parse(c.Get("/slots")->body);
    REQUIRE(slots.size() == 6);
    CHECK(slots[5]["id"] == 5);
    CHECK(slots[0].contains("worker"));
    const auto props = json::parse(c.Get("/props")->body);
    CHECK(props["total_slots"] == 6);
    CHECK(props["workers"].size() == 2);
}

TEST_CASE("a slow reader slows the relay and the pool's memory stays bounded", "[integration]") {
    PoolProcess pool(pool_args({}, {"--tokens-per-second", "1000000"}));
    REQUIRE(pool.wait_ready(1, 20s));
    auto rss_kib = [&] {
        std::ifstream status("/proc/" + std::to_string(pool.process().pid()) + "/status");
        std::string line;
        while (std::getline(status, line)) {
            if (line.rfind("VmRSS:", 0) == 0) {
                return std::stol(line.substr(6));
            }
        }
        return 0L;
    };
    const auto before = rss_kib();
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    std::string error;
    auto fd = llama_pool::connect_tcp("127.0.0.1", pool.port(), deadline, error);
    REQUIRE(fd.valid());
    const int small = 4096;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    // About 25 MB of events if the relay read ahead of the client without limit.
    const std::string body = R"({"prompt":"x","max_tokens":300000,"stream":true})";
    llama_pool::write_all(fd.get(),
                          "POST /completion HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                              std::to_string(body.size()) + "\r\n\r\n" + body,
                          deadline);
    long peak = before;
    std::size_t read_total = 0;
    char buf[1024];
    for (int i = 0; i < 150; ++i) {  // a trickle: about 1 KiB per 10 ms for 1.5 s
        std::size_t n = 0;
        if (llama_pool::read_some(fd.get(), buf, sizeof buf, n, deadline) !=
            llama_pool::IoStatus::ok) {
            break;
        }
        read_total += n;
        std::this_thread::sleep_for(10ms);
        peak = std::max(peak, rss_kib());
    }
    INFO("rss before " << before << " KiB, peak " << peak << " KiB, client read " << read_total
                       << " bytes");
    CHECK(read_total > 0);
    CHECK(peak - before < 8 * 1024);  // far below the 25 MB the stream would be
    fd.reset();
    CHECK(wait_until([&] { return pool.status()["totals"]["inflight"] == 0; }, 5s));
}
