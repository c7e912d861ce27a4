// Requests that wait hold no thread of the pool (issue 18): one queued for a slot and one
// waiting for its worker's first byte are both watched by the server's event loop, and a
// client that leaves while it waits gives its place or its slot back at once.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/socket.hpp"
#include "test/support/pool_fixture.hpp"

using namespace llama_pool::test;
using namespace std::chrono_literals;

namespace {

const std::string kBody = R"({"prompt":"x","max_tokens":2})";

std::string post_keep_alive(const std::string& body) {
    return "POST /completion HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           "Content-Length: " +
           std::to_string(body.size()) + "\r\n\r\n" + body;
}

int process_threads(int pid) {
    std::ifstream status("/proc/" + std::to_string(pid) + "/status");
    for (std::string line; std::getline(status, line);) {
        if (line.rfind("Threads:", 0) == 0) {
            return std::stoi(line.substr(8));
        }
    }
    return -1;
}

double scrape(PoolProcess& pool, const std::string& prefix) {
    const auto r = pool.client(10s).Get("/metrics");
    return r && r->status == 200 ? metric_value(r->body, prefix) : -1;
}

}  // namespace

TEST_CASE("requests waiting for a slot or a first byte hold no thread each",
          "[integration][deferred]") {
    TempDir dir;
    const auto faults = dir.file("faults");
    std::ofstream(faults) << "";
    PoolProcess pool(
        fake_pool_args(1, {"--parallel", "4", "--queue-max", "500", "--max-connections", "400"},
                       {"--fault-file", faults}));
    REQUIRE(pool.wait_ready(1, 20s));
    const auto worker_port = pool.status()["workers"][0]["port"].get<int>();
    // The worker takes every completion into a slot and answers nothing until released.
    std::ofstream(faults) << worker_port << " hold\n";

    constexpr int kClients = 120;
    constexpr int kSlots = 4;
    // One request at a time, each counted before the next is sent: a burst of new connections
    // starts threads of its own (each first request is parsed and sent on a server thread),
    // which retire later; what is measured here is what a waiting request holds.
    std::vector<llama_pool::Fd> clients;
    for (int i = 0; i < kClients; ++i) {
        std::string error;
        auto fd = llama_pool::connect_tcp("127.0.0.1", pool.port(),
                                          std::chrono::steady_clock::now() + 5s, error);
        REQUIRE(fd.valid());
        REQUIRE(llama_pool::write_all(fd.get(), post_keep_alive(kBody),
                                      std::chrono::steady_clock::now() + 5s) ==
                llama_pool::IoStatus::ok);
        clients.push_back(std::move(fd));
        REQUIRE(wait_until(
            [&] {
                return scrape(pool, "llama_pool_requests_waiting") +
                           scrape(pool, "llama_pool_inflight_requests") ==
                       i + 1;
            },
            30s, 5ms));
    }
    // Four wait for the worker's first byte, the rest in the queue.
    CHECK(scrape(pool, "llama_pool_requests_waiting") == kClients - kSlots);
    CHECK(scrape(pool, "llama_pool_inflight_requests") == kSlots);
    const int threads = process_threads(pool.process().pid());
    INFO("threads in the pool with " << kClients << " requests waiting: " << threads);
    CHECK(threads > 0);
    // The supervisor, its probes and the server's spare threads: far fewer than the requests
    // (a thread each before: 129 here).
    CHECK(threads < kClients / 2);

    clients.clear();  // every client hangs up while its request waits
    CHECK(wait_until(
        [&] {
            return scrape(pool, "llama_pool_requests_waiting") == 0 &&
                   scrape(pool, "llama_pool_inflight_requests") == 0;
        },
        30s, 50ms));

    std::ofstream(faults) << "";  // released: the pool serves as before
    const auto r = pool.client(30s).Post("/completion", kBody, "application/json");
    REQUIRE(r);
    CHECK(r->status == 200);
}
