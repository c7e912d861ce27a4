// The worker-side security defaults against a REAL llama-server: it listens on loopback only,
// refuses requests without the pool's per-boot key, and took that key from the private file
// the pool passed with --api-key-file, which is gone once the worker answers.
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
    // Read at start-up and removed once the worker answered: no key left on disk.
    CHECK_FALSE(std::ifstream(path).good());

    httplib::Client direct("127.0.0.1", worker["port"].get<int>());
    const std::string body = R"({"prompt":"Hello","n_predict":2})";
    const auto refused = direct.Post("/completion", body, "application/json");
    REQUIRE(refused);
    CHECK(refused->status == 401);
    // Through the pool, without any key of the client's.
    const auto relayed = pool.client().Post("/completion", body, "application/json");
    REQUIRE(relayed);
    CHECK(relayed->status == 200);
}
