// Supervisor shutdown: stop() must never wait on a lock that a worker or a second signal
// needs (issue 17, item 1). A deadlock cannot be unwound, so a call that does not come back
// within a generous bound ends the test binary with a message instead of hanging ctest.

#include <sys/stat.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <future>
#include <mutex>
#include <thread>

#include "common/log.hpp"
#include "supervisor/supervisor.hpp"
#include "test/support/fakes.hpp"
#include "test/support/test_process.hpp"

using namespace llama_pool;
using namespace std::chrono_literals;

namespace {

// Far longer than any of these calls needs when nothing is wrong.
constexpr auto kBound = 60s;

// Runs `fn` on its own thread and returns a future for its end.
std::future<void> run_async(std::function<void()> fn) {
    return std::async(std::launch::async, std::move(fn));
}

void require_finishes(std::future<void>& done, const char* what) {
    if (done.wait_for(kBound) != std::future_status::ready) {
        std::fprintf(stderr, "DEADLOCK: %s did not return within %lld s\n", what,
                     static_cast<long long>(kBound.count()));
        std::_Exit(1);
    }
    done.get();
}

// A script standing in for llama-server: `body` runs whatever the arguments.
std::string write_program(const test::TempDir& dir, const std::string& body) {
    const auto path = dir.file("worker.sh");
    std::ofstream(path) << "#!/bin/sh\n" << body << "\n";
    ::chmod(path.c_str(), 0700);
    return path;
}

PoolConfig config_for(const std::string& program, int workers) {
    PoolConfig c;
    c.llama_server = program;
    c.model = "/nonexistent.gguf";
    c.workers = workers;
    c.startup_timeout = 3600;
    c.restart_backoff_base = 0;
    c.restart_backoff_cap = 0;
    c.crash_loop_restarts = 1000000;  // keep respawning, never give up
    c.stop_grace = 5;
    return c;
}

// Reports one request in flight on every worker, forever, and tells when a worker first
// asks (it does so only while draining, for a worker that never got ready).
class BusyListener final : public WorkerListener {
  public:
    void worker_ready(const WorkerEndpoint&) override {}
    void worker_unavailable(const std::string&) override {}
    int worker_inflight(const std::string&) const override {
        std::call_once(asked_once_, [this] { asked_.set_value(); });
        return 1;
    }
    void worker_removed(const std::string&) override {}
    std::future<void> first_asked() { return asked_.get_future(); }

  private:
    mutable std::once_flag asked_once_;
    mutable std::promise<void> asked_;
};

class IdleListener final : public WorkerListener {
  public:
    void worker_ready(const WorkerEndpoint&) override {}
    void worker_unavailable(const std::string&) override {}
    int worker_inflight(const std::string&) const override { return 0; }
    void worker_removed(const std::string&) override {}
};

}  // namespace

TEST_CASE("hurry() ends a stop() that is draining a busy worker", "[supervisor][shutdown]") {
    // The first signal starts a long drain; the second must cut it short. hurry() used to
    // wait for the lock stop() held while joining the workers, so it ran after the drain.
    test::TempDir dir;
    Logger log(LogFormat::text, LogLevel::error, [](std::string_view) {});
    BusyListener listener;
    SeededRandom random(1);
    Supervisor sup(config_for(write_program(dir, "exec sleep 600"), 1), log, listener, random);
    sup.start();
    REQUIRE(test::wait_until(
        [&] {
            const auto s = sup.status();
            return s.size() == 1 && s[0].pid != 0;
        },
        30s));
    auto draining = listener.first_asked();
    auto stopped = run_async([&] { sup.stop(std::chrono::hours(1)); });
    REQUIRE(draining.wait_for(kBound) == std::future_status::ready);
    auto hurried = run_async([&] { sup.hurry(); });
    require_finishes(hurried, "hurry() during stop()");
    require_finishes(stopped, "stop() after hurry()");
    const auto s = sup.status();
    REQUIRE(s.size() == 1);
    CHECK(s[0].state == WorkerState::stopped);
    CHECK(s[0].pid == 0);
}

TEST_CASE("stop() returns while workers respawn in a crash loop", "[supervisor][shutdown]") {
    // A worker past its stop check respawns and takes a port; stop() used to hold the lock
    // that pick_port() needs while it joined that worker. Workers that exit at once spend
    // much of their time in that window; several rounds make hitting it near certain.
    test::TempDir dir;
    const auto program = write_program(dir, "exit 1");
    Logger log(LogFormat::text, LogLevel::error, [](std::string_view) {});
    IdleListener listener;
    SeededRandom random(1);
    for (int round = 0; round < 10; ++round) {
        Supervisor sup(config_for(program, 3), log, listener, random);
        sup.start();
        REQUIRE(test::wait_until(
            [&] {
                for (const auto& s : sup.status()) {
                    if (s.restarts < 2) {
                        return false;
                    }
                }
                return true;
            },
            30s));
        auto stopped = run_async([&] { sup.stop(Duration::zero()); });
        require_finishes(stopped, "stop() during respawns");
        for (const auto& s : sup.status()) {
            CHECK(s.state == WorkerState::stopped);
        }
    }
}
