// The security defaults the README promises, checked on a running pool: it listens on
// 127.0.0.1 unless told otherwise; workers listen on 127.0.0.1 and take only the pool's
// per-boot key, which they read from a private file (never from their command line); no
// key shows in the logs.
#include <signal.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "test/support/pool_fixture.hpp"

using namespace llama_pool::test;
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

// The addresses a TCP port is listened on, from /proc/net/tcp and tcp6 ("127.0.0.1",
// "0.0.0.0", "::"...).
std::vector<std::string> listen_addresses(int port) {
    std::vector<std::string> out;
    for (const auto* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
        std::ifstream in(table);
        std::string line;
        std::getline(in, line);  // header
        while (std::getline(in, line)) {
            std::istringstream fields(line);
            std::string slot, local, remote, state;
            fields >> slot >> local >> remote >> state;
            const auto colon = local.find(':');
            if (state != "0A" || std::stoi(local.substr(colon + 1), nullptr, 16) != port) {
                continue;
            }
            const auto hex = local.substr(0, colon);
            if (hex.size() == 8) {
                const auto v = std::stoul(hex, nullptr, 16);  // little-endian on x86 and arm
                out.push_back(std::to_string(v & 0xff) + "." + std::to_string((v >> 8) & 0xff) +
                              "." + std::to_string((v >> 16) & 0xff) + "." +
                              std::to_string(v >> 24));
            } else {
                out.push_back(hex == "00000000000000000000000000000000"   ? "::"
                              : hex == "00000000000000000000000001000000" ? "::1"
                                                                          : hex);
            }
        }
    }
    return out;
}

std::vector<std::string> cmdline_args(int pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline");
    std::vector<std::string> out;
    std::string arg;
    while (std::getline(in, arg, '\0')) {
        out.push_back(arg);
    }
    return out;
}

std::string arg_after(const std::vector<std::string>& args, const std::string& flag) {
    for (std::size_t i = 0; i + 1 < args.size(); ++i) {
        if (args[i] == flag) {
            return args[i + 1];
        }
    }
    return {};
}

// The key the pool sent a fake worker, from the worker's request log (--log-requests).
std::string worker_key_from(const std::string& log) {
    std::ifstream in(log);
    std::string line;
    while (std::getline(in, line)) {
        const auto entry = json::parse(line);
        for (const auto& h : entry["headers"]) {
            const auto value = h[1].get<std::string>();
            if (h[0] == "Authorization" && value.rfind("Bearer ", 0) == 0) {
                return value.substr(7);
            }
        }
    }
    return {};
}

}  // namespace

TEST_CASE("the pool and its workers listen on 127.0.0.1 unless told otherwise",
          "[integration][security]") {
    PoolProcess pool(fake_pool_args(1));
    REQUIRE(pool.wait_ready(1, 20s));
    CHECK(listen_addresses(pool.port()) == std::vector<std::string>{"127.0.0.1"});
    const auto worker = pool.status()["workers"][0];
    CHECK(listen_addresses(worker["port"].get<int>()) == std::vector<std::string>{"127.0.0.1"});
    CHECK(arg_after(cmdline_args(worker["pid"].get<int>()), "--host") == "127.0.0.1");
}

TEST_CASE("workers read the per-boot key from a private file, never from their command line",
          "[integration][security]") {
    TempDir dir;
    const auto log = dir.file("requests.jsonl");
    PoolProcess pool(fake_pool_args(1, {}, {"--log-requests", log}));
    REQUIRE(pool.wait_ready(1, 20s));
    const auto worker = pool.status()["workers"][0];
    const auto args = cmdline_args(worker["pid"].get<int>());
    CHECK(std::find(args.begin(), args.end(), "--api-key") == args.end());
    const auto key_file = arg_after(args, "--api-key-file");
    REQUIRE_FALSE(key_file.empty());
    // On disk only while the worker starts: gone with its directory once it answers.
    CHECK(::access(key_file.c_str(), F_OK) != 0);
    CHECK(::access(key_file.substr(0, key_file.rfind('/')).c_str(), F_OK) != 0);
    // Around the pool, the worker refuses; the key the pool sends opens it.
    httplib::Client direct("127.0.0.1", worker["port"].get<int>());
    const std::string body = R"({"prompt":"x","max_tokens":1})";
    CHECK(direct.Post("/completion", body, "application/json")->status == 401);
    CHECK(pool.client().Post("/completion", body, "application/json")->status == 200);
    const auto key = worker_key_from(log);
    REQUIRE(key.size() == 32);
    CHECK(
        direct.Post("/completion", {{"Authorization", "Bearer " + key}}, body, "application/json")
            ->status == 200);
    CHECK(pool.process().output().find(key) == std::string::npos);
    std::remove(log.c_str());
}

TEST_CASE("a worker restarted after a crash gets the key again", "[integration][security]") {
    PoolProcess pool(fake_pool_args(1));
    REQUIRE(pool.wait_ready(1, 20s));
    const auto first = pool.worker_pids().at(0);
    ::kill(first, SIGKILL);
    REQUIRE(wait_until(
        [&] {
            const auto pids = pool.worker_pids();
            return !pids.empty() && pids[0] != first && pool.status()["totals"]["ready"] == 1;
        },
        20s));
    const auto r =
        pool.client().Post("/completion", R"({"prompt":"x","max_tokens":1})", "application/json");
    REQUIRE(r);
    CHECK(r->status == 200);
}

TEST_CASE("no key the pool is given or makes shows in its log", "[integration][security]") {
    TempDir dir;
    const auto log = dir.file("requests.jsonl");
    PoolProcess pool(fake_pool_args(
        1,
        {"--api-key", "client-secret-1", "--admin-key", "admin-secret-2", "--metrics-key",
         "metrics-secret-3", "--upstream-api-key", "upstream-secret-4", "--log-level", "debug"},
        {"--log-requests", log}));
    auto c = pool.client();
    REQUIRE(wait_until(
        [&] {
            const auto r = c.Get("/pool/status", {{"X-Api-Key", "admin-secret-2"}});
            return r && r->status == 200 && json::parse(r->body)["totals"]["ready"].get<int>() == 1;
        },
        20s));
    const std::string body = R"({"prompt":"x","max_tokens":1})";
    CHECK(c.Post("/completion", {{"Authorization", "Bearer client-secret-1"}}, body,
                 "application/json")
              ->status == 200);
    CHECK(c.Post("/completion", {{"Authorization", "Bearer wrong-secret-5"}}, body,
                 "application/json")
              ->status == 401);
    CHECK(c.Get("/metrics", {{"X-Api-Key", "metrics-secret-3"}})->status == 200);
    CHECK(c.Get("/pool/status")->status == 401);
    const auto status = json::parse(c.Get("/pool/status", {{"X-Api-Key", "admin-secret-2"}})->body);
    const auto worker_key = worker_key_from(log);
    REQUIRE(worker_key.size() == 32);
    const auto output = pool.process().output();
    for (const auto& secret : {std::string("client-secret-1"), std::string("admin-secret-2"),
                               std::string("metrics-secret-3"), std::string("upstream-secret-4"),
                               std::string("wrong-secret-5"), worker_key}) {
        INFO(secret);
        CHECK(output.find(secret) == std::string::npos);
    }
    // Nor in what the pool shows of itself.
    CHECK(status.dump().find(worker_key) == std::string::npos);
    CHECK(c.Get("/pool/workers/0/log", {{"X-Api-Key", "admin-secret-2"}})->body.find(worker_key) ==
          std::string::npos);
    std::remove(log.c_str());
}
