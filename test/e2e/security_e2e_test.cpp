// The worker-side security defaults against a REAL llama-server: it listens on loopback only
// and refuses every request but /health without the pool's per-boot key, which it read from
// the private file the pool passed with --api-key-file.
#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>

#include "test/support/pool_fixture.hpp"
#include "test/support/real_worker.hpp"

using namespace llama_pool::test;
using json = nlohmann::json;
using namespace std::chrono_literals;

TEST_CASE("a real worker takes the pool's key from a file and refuses requests without it",
          "[e2e][security]") {
    PoolProcess pool(real_pool_args(1));
    REQUIRE(pool.wait_ready(1, 120s));
    const auto worker = pool.status()["workers"][0];
    const auto cmdline = process_cmdline(worker["pid"].get<int>());
    INFO(cmdline);
    CHECK(cmdline.find("--host 127.0.0.1 ") != std::string::npos);
    CHECK(cmdline.find("--api-key ") == std::string::npos);
    const auto at = cmdline.find("--api-key-file ");
    REQUIRE(at != std::string::npos);
    const auto path_start = at + std::string("--api-key-file ").size();
    const auto path = cmdline.substr(path_start, cmdline.find(' ', path_start) - path_start);
    std::string key;
    std::getline(std::ifstream(path), key);
    REQUIRE(key.size() == 32);

    httplib::Client direct("127.0.0.1", worker["port"].get<int>());
    const std::string body = R"({"prompt":"Hello","n_predict":2})";
    const auto refused = direct.Post("/completion", body, "application/json");
    REQUIRE(refused);
    CHECK(refused->status == 401);
    const auto served =
        direct.Post("/completion", {{"Authorization", "Bearer " + key}}, body, "application/json");
    REQUIRE(served);
    CHECK(served->status == 200);
    // Through the pool, without any key of the client's.
    const auto relayed = pool.client().Post("/completion", body, "application/json");
    REQUIRE(relayed);
    CHECK(relayed->status == 200);
    CHECK(pool.process().output().find(key) == std::string::npos);
}
