#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>

#include "common/backoff.hpp"
#include "supervisor/health_body.hpp"
#include "supervisor/restart_policy.hpp"
#include "supervisor/secret_file.hpp"
#include "supervisor/worker_args.hpp"
#include "supervisor/worker_state.hpp"
#include "test/support/fakes.hpp"

using namespace llama_pool;
using namespace std::chrono_literals;

TEST_CASE("backoff ceilings double up to the cap and jitter stays inside", "[backoff]") {
    const ExponentialBackoff b(100ms, 1s);
    CHECK(b.ceiling(0) == 100ms);
    CHECK(b.ceiling(1) == 200ms);
    CHECK(b.ceiling(3) == 800ms);
    CHECK(b.ceiling(4) == 1s);
    CHECK(b.ceiling(60) == 1s);
    test::ScriptedRandom low({0.0}), high({0.999999});
    CHECK(b.delay(2, low) == 0ms);
    CHECK(b.delay(2, high) <= 400ms);
    CHECK(b.delay(2, high) > 399ms);
    CHECK(b.delay_at_least_half(2, low) == 200ms);
}

TEST_CASE("the restart policy backs off, resets on ready, and gives up on a crash loop",
          "[restart]") {
    test::ScriptedRandom random({0.0});
    RestartPolicy policy(1s, 8s, 3, 60s);
    const TimePoint t0{};
    auto d1 = policy.on_failure(t0, random);
    CHECK_FALSE(d1.give_up);
    CHECK(d1.delay == 500ms);  // at least half of the 1 s ceiling
    auto d2 = policy.on_failure(t0 + 10s, random);
    CHECK(d2.delay == 1s);
    policy.on_ready();
    CHECK(policy.consecutive_failures() == 0);
    // Third failure inside the window: crash loop, even though the worker reached ready.
    auto d3 = policy.on_failure(t0 + 59s, random);
    CHECK(d3.give_up);
    CHECK(d3.reason.find("crash loop: 3 failures") != std::string::npos);
}

TEST_CASE("failures older than the window do not count toward a crash loop", "[restart]") {
    test::ScriptedRandom random({0.5});
    RestartPolicy policy(1s, 8s, 3, 60s);
    const TimePoint t0{};
    policy.on_failure(t0, random);
    policy.on_failure(t0 + 1s, random);
    // Just past the window of the first failure: two failures inside it, no crash loop.
    CHECK_FALSE(policy.on_failure(t0 + 60s + 1ms, random).give_up);
    // Just inside the window of the second: three in 60 s.
    CHECK(policy.on_failure(t0 + 61s, random).give_up);
    policy.reset();
    CHECK_FALSE(policy.on_failure(t0 + 62s, random).give_up);
}

TEST_CASE("worker state transitions follow the table", "[state]") {
    using S = WorkerState;
    CHECK(transition_allowed(S::starting, S::loading));
    CHECK(transition_allowed(S::loading, S::warming));
    CHECK(transition_allowed(S::warming, S::ready));
    CHECK(transition_allowed(S::ready, S::draining));
    CHECK(transition_allowed(S::draining, S::stopped));
    CHECK(transition_allowed(S::ready, S::backoff));
    CHECK(transition_allowed(S::backoff, S::failed));
    CHECK(transition_allowed(S::failed, S::starting));
    CHECK_FALSE(transition_allowed(S::starting, S::ready));  // never skip the warm-up
    CHECK_FALSE(transition_allowed(S::loading, S::ready));
    CHECK_FALSE(transition_allowed(S::stopped, S::ready));
    CHECK_FALSE(transition_allowed(S::failed, S::ready));
    for (const auto s : all_worker_states) {
        CHECK(to_string(s) != "unknown");
    }
}

TEST_CASE("health bodies are read leniently", "[health]") {
    CHECK(classify_health(200, R"({"status":"ok"})") == HealthVerdict::ok);
    CHECK(classify_health(
              503,
              R"({"error":{"code":503,"message":"Loading model","type":"unavailable_error"}})") ==
          HealthVerdict::loading);
    CHECK(classify_health(503, R"({"status":"loading model"})") == HealthVerdict::loading);
    CHECK(classify_health(503, R"({"status":"no slot available"})") == HealthVerdict::busy);
    CHECK(classify_health(200, "not json") == HealthVerdict::error);
    CHECK(classify_health(500, R"({"status":"ok"})") == HealthVerdict::error);
    CHECK(classify_health(200, R"([1,2)") == HealthVerdict::error);
}

TEST_CASE("worker arguments: what the pool must add, and never -n", "[args]") {
    PoolConfig c;
    c.model = "/m.gguf";
    c.parallel = 3;
    c.ctx_size = 2048;
    c.worker_args = {"--cache-reuse", "256"};
    const auto args = build_worker_args(c, 4321, 2, "secret", "/run/key");
    const auto has = [&](const std::string& a) {
        return std::find(args.begin(), args.end(), a) != args.end();
    };
    CHECK(has("--slots"));
    CHECK(has("--metrics"));
    // The key goes by file: a command line is readable by every user of the machine.
    CHECK(has("--api-key-file"));
    CHECK(has("/run/key"));
    CHECK_FALSE(has("secret"));
    CHECK_FALSE(has("--api-key"));
    const auto no_file = build_worker_args(c, 4321, 2, "secret");
    CHECK(std::find(no_file.begin(), no_file.end(), "secret") != no_file.end());
    CHECK(has("4321"));
    CHECK_FALSE(has("-n"));
    CHECK_FALSE(has("--n-predict"));
    CHECK(args.back() == "256");
    // BitNet's fork accepts --slots and serves /slots only with it: the legacy flag (kept for
    // old configs) must not take it away.
    c.legacy_flags = true;
    const auto legacy = build_worker_args(c, 4321, 2, "");
    CHECK(std::find(legacy.begin(), legacy.end(), "--slots") != legacy.end());
    CHECK(std::find(legacy.begin(), legacy.end(), "--api-key") == legacy.end());
}

TEST_CASE("threads auto divides the cores among workers", "[args]") {
    CHECK(threads_per_worker(0, 2, 12) == 6);
    CHECK(threads_per_worker(0, 4, 2) == 1);
    CHECK(threads_per_worker(0, 3, 8) == 2);
    CHECK(threads_per_worker(5, 2, 12) == 5);
}

TEST_CASE("a secret file is readable by its owner only and goes with its directory",
          "[args][security]") {
    std::string path;
    {
        const SecretFile file("s3cret-key");
        path = file.path();
        const auto dir = path.substr(0, path.rfind('/'));
        struct stat st {};
        REQUIRE(::stat(path.c_str(), &st) == 0);
        CHECK((st.st_mode & 0777) == 0600);
        CHECK(st.st_uid == ::getuid());
        REQUIRE(::stat(dir.c_str(), &st) == 0);
        CHECK((st.st_mode & 0777) == 0700);
        std::string line;
        std::getline(std::ifstream(path), line);
        CHECK(line == "s3cret-key");  // one line, as llama-server's --api-key-file reads it
        CHECK(dir.find("llama-pool-") != std::string::npos);
    }
    CHECK(::access(path.c_str(), F_OK) != 0);
    CHECK(::access(path.substr(0, path.rfind('/')).c_str(), F_OK) != 0);
}
