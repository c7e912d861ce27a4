// Upstreams the pool fronts but does not manage: standalone workers and whole back pools.
#include <signal.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "test/support/pool_fixture.hpp"

using namespace llama_pool::test;
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

struct Fake {
    std::unique_ptr<TestProcess> process;
    std::uint16_t port = 0;
};

// Starts a fake worker with `args` on `port` (0: the kernel picks one, read from the fake's
// "listening on" line, so no other process can take it between a pick and the bind).
Fake start_fake(std::vector<std::string> args, std::uint16_t port = 0) {
    args.insert(args.end(), {"--port", std::to_string(port)});
    Fake fake{std::make_unique<TestProcess>(FAKE_WORKER_BINARY, args)};
    static const std::regex listening(R"(listening on \S*:(\d+))");
    REQUIRE(wait_until(
        [&] {
            const auto out = fake.process->output();
            std::smatch m;
            if (!std::regex_search(out, m, listening)) {
                return false;
            }
            fake.port = static_cast<std::uint16_t>(std::stoi(m[1].str()));
            return true;
        },
        10s));
    return fake;
}

Fake start_fake(std::uint16_t port = 0) {
    auto fake = start_fake({"--parallel", "2"}, port);
    REQUIRE(wait_until(
        [&] { return static_cast<bool>(httplib::Client("127.0.0.1", fake.port).Get("/health")); },
        10s));
    return fake;
}

std::vector<std::string> front_args(const std::vector<std::uint16_t>& ports) {
    std::vector<std::string> args = {
        "--workers",         "0", "--health-interval",    "0.2",  "--health-timeout",    "0.5",
        "--health-failures", "2", "--retry-backoff-base", "0.01", "--retry-backoff-cap", "0.05"};
    for (const auto port : ports) {
        args.push_back("--upstream");
        args.push_back("http://127.0.0.1:" + std::to_string(port));
    }
    return args;
}

int post_status(PoolProcess& pool) {
    const auto r = pool.client(30s).Post("/completion", R"({"prompt":"x","max_tokens":2})",
                                         "application/json");
    return r ? r->status : 0;
}

}  // namespace

TEST_CASE("unmanaged upstreams are checked, balanced, dropped when dead and taken back",
          "[integration]") {
    auto fake_a = start_fake();
    auto fake_b = start_fake();
    const auto a = fake_a.port;
    PoolProcess pool(front_args({a, fake_b.port}));
    REQUIRE(pool.wait_ready(2, 20s));
    const auto status = pool.status();
    CHECK(status["workers"][0]["managed"] == false);
    CHECK(status["workers"][0]["slots"] == 2);
    CHECK(status["workers"][0]["pid"] == 0);
    for (int i = 0; i < 10; ++i) {
        CHECK(post_status(pool) == 200);
    }
    fake_a.process->signal(SIGKILL);
    fake_a.process->wait_exit(5s);
    for (int i = 0; i < 10; ++i) {
        CHECK(post_status(pool) == 200);  // retried on the live one, then routed there
    }
    REQUIRE(wait_until([&] { return pool.status()["workers"][0]["state"] != "ready"; }, 10s));
    CHECK(pool.status()["totals"]["ready"] == 1);
    fake_a = start_fake(a);  // it comes back on the same address, free since the kill
    CHECK(wait_until([&] { return pool.status()["totals"]["ready"] == 2; }, 10s));
}

TEST_CASE("a front pool over two back pools survives one back pool being killed", "[integration]") {
    PoolProcess back1(fake_pool_args(1));
    PoolProcess back2(fake_pool_args(1));
    REQUIRE(back1.wait_ready(1, 20s));
    REQUIRE(back2.wait_ready(1, 20s));
    PoolProcess front(front_args({back1.port(), back2.port()}));
    REQUIRE(front.wait_ready(2, 20s));
    for (int i = 0; i < 10; ++i) {
        CHECK(post_status(front) == 200);
    }
    const auto back1_workers = back1.worker_pids();
    back1.process().signal(SIGKILL);
    back1.process().wait_exit(5s);
    for (int i = 0; i < 20; ++i) {
        CHECK(post_status(front) == 200);
    }
    CHECK(wait_until([&] { return front.status()["totals"]["ready"] == 1; }, 10s));
    // The killed back pool's own worker died with it (no orphan on that "machine" either).
    for (const auto pid : back1_workers) {
        CHECK(wait_until([&] { return !process_alive(pid); }, 5s));
    }
}

TEST_CASE("a malformed upstream URL is refused at start with the key and the value",
          "[integration]") {
    TestProcess bad(LLAMA_POOL_BINARY,
                    {"--workers", "0", "--upstream", "https://10.0.0.1:8080", "--check-config"});
    CHECK(bad.wait_exit(10s) == 2);
    CHECK(bad.output().find(
              "key \"upstreams.urls\": \"https://10.0.0.1:8080\" must start with http://") !=
          std::string::npos);
}

TEST_CASE("dns:// upstreams follow the name: new addresses join, vanished ones are drained",
          "[integration]") {
    // The pool resolves through the system resolver as in production; it runs in its own
    // mount namespace with an /etc/hosts this test rewrites, so no real DNS is involved.
    TempDir dir;
    const auto hosts = dir.file("hosts");
    const auto write_hosts = [&](const std::string& text) {
        std::ofstream out(hosts, std::ios::trunc);  // in place: the bind mount sees the inode
        out << text;
    };
    write_hosts("127.0.0.2 backends.test\n");
    // The first fake takes a port the kernel picks; the second has another address, so the
    // same port is free for it.
    std::vector<Fake> fakes;
    fakes.push_back(start_fake({"--host", "127.0.0.2"}));
    const auto port = fakes.front().port;
    fakes.push_back(start_fake({"--host", "127.0.0.3"}, port));
    PoolProcess pool({"--workers", "0", "--health-interval", "0.2", "--dns-interval", "0.2",
                      "--upstream", "dns://backends.test:" + std::to_string(port)},
                     {"/usr/bin/unshare", "--mount", "/bin/sh", "-c",
                      "mount --bind " + hosts + " /etc/hosts && exec \"$0\" \"$@\""});
    auto status = [&] {
        const auto r = pool.client().Get("/pool/status");
        return r && r->status == 200 ? json::parse(r->body) : json::object();
    };
    auto ids = [&] {
        std::set<std::string> out;
        for (const auto& w : status().value("workers", json::array())) {
            if (w["state"] == "ready") {
                out.insert(w["id"].get<std::string>());
            }
        }
        return out;
    };
    INFO(pool.process().output());
    REQUIRE(wait_until([&] { return ids() == std::set<std::string>{"u0/127.0.0.2"}; }, 20s));
    write_hosts("127.0.0.2 backends.test\n127.0.0.3 backends.test\n");
    REQUIRE(wait_until(
        [&] {
            return ids() == std::set<std::string>{"u0/127.0.0.2", "u0/127.0.0.3"};
        },
        20s));
    write_hosts("127.0.0.3 backends.test\n");
    REQUIRE(wait_until(
        [&] {
            return status().value("workers", json::array()).size() == 1 &&
                   ids() == std::set<std::string>{"u0/127.0.0.3"};
        },
        20s));
    auto c = pool.client();
    for (int i = 0; i < 5; ++i) {
        const auto r =
            c.Post("/completion", R"({"prompt":"x","max_tokens":1})", "application/json");
        REQUIRE(r);
        CHECK(r->status == 200);
    }
    CHECK(pool.process().output().find("event=upstream_vanished") != std::string::npos);
    pool.process().signal(SIGTERM);
    CHECK(pool.process().wait_exit(20s) == 0);
    std::remove(hosts.c_str());
}
