// A worker's owner thread sleeps until its next deadline or an event (issue 17, item 3): the
// child's exit and a posted request must wake it, however far the next probe is.

#include <signal.h>
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <fstream>

#include "common/log.hpp"
#include "supervisor/supervisor.hpp"
#include "test/support/test_process.hpp"

using namespace llama_pool;
using namespace std::chrono_literals;

namespace {

class QuietListener final : public WorkerListener {
  public:
    void worker_ready(const WorkerEndpoint&) override {}
    void worker_unavailable(const std::string&) override {}
    int worker_inflight(const std::string&) const override { return 0; }
    void worker_removed(const std::string&) override {}
};

PoolConfig config_for(const std::string& program) {
    PoolConfig c;
    c.llama_server = program;
    c.model = FAKE_WORKER_BINARY;  // a file that exists; the fake does not read it
    c.workers = 1;
    c.health_interval = 3600;  // no probe will notice anything during the test
    c.idle_probe_interval = 3600;
    c.restart_backoff_base = 0;
    c.restart_backoff_cap = 0;
    c.stop_grace = 5;
    return c;
}

WorkerStatus only(const Supervisor& sup) {
    const auto s = sup.status();
    REQUIRE(s.size() == 1);
    return s[0];
}

}  // namespace

TEST_CASE("a ready worker whose process dies is restarted without waiting for a probe",
          "[supervisor][events]") {
    Logger log(LogFormat::text, LogLevel::error, [](std::string_view) {});
    QuietListener listener;
    SeededRandom random(1);
    Supervisor sup(config_for(FAKE_WORKER_BINARY), log, listener, random);
    sup.start();
    REQUIRE(test::wait_until([&] { return only(sup).state == WorkerState::ready; }, 30s));
    const auto pid = only(sup).pid;
    REQUIRE(pid > 0);
    ::kill(pid, SIGKILL);
    // The next health probe is an hour away: only the exit event can bring this about.
    CHECK(test::wait_until(
        [&] {
            const auto s = only(sup);
            return s.failures_by_reason.count(FailureKind::crashed) == 1 && s.pid != pid;
        },
        30s));
    sup.stop(Duration::zero());
}

TEST_CASE("a failed worker sleeps until an admin restart wakes it", "[supervisor][events]") {
    test::TempDir dir;
    const auto program = dir.file("worker.sh");
    std::ofstream(program) << "#!/bin/sh\nexit 1\n";
    ::chmod(program.c_str(), 0700);
    auto config = config_for(program);
    config.crash_loop_restarts = 2;  // gives up at the second failure
    Logger log(LogFormat::text, LogLevel::error, [](std::string_view) {});
    QuietListener listener;
    SeededRandom random(1);
    Supervisor sup(config, log, listener, random);
    sup.start();
    REQUIRE(test::wait_until([&] { return only(sup).state == WorkerState::failed; }, 30s));
    const auto before = only(sup).failures_by_reason.at(FailureKind::startup_exit);
    CHECK(before == 2);
    REQUIRE(sup.restart_worker("0"));
    CHECK(test::wait_until(
        [&] {
            const auto s = only(sup);
            return s.state == WorkerState::failed &&
                   s.failures_by_reason.at(FailureKind::startup_exit) == before + 2;
        },
        30s));
    sup.stop(Duration::zero());
}
