// The lifecycle core Worker and UpstreamMonitor share (issue 17, item 3).

#include "supervisor/lifecycle.hpp"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

using namespace llama_pool;

namespace {

struct Captured {
    std::vector<std::string> lines;
    Logger log{LogFormat::text, LogLevel::debug,
               [this](std::string_view line) { lines.emplace_back(line); }};
    std::size_t count(const std::string& needle) const {
        std::size_t n = 0;
        for (const auto& l : lines) {
            n += l.find(needle) != std::string::npos ? 1 : 0;
        }
        return n;
    }
};

}  // namespace

TEST_CASE("every legal change is logged once and seen by the observers", "[lifecycle]") {
    Captured out;
    Lifecycle life(out.log, "supervisor", "worker_state", "worker_failed", {{"worker", "7"}});
    std::vector<std::pair<WorkerState, WorkerState>> seen;
    life.observe([&](const Lifecycle::Change& c) { seen.emplace_back(c.from, c.to); });
    life.transition(WorkerState::loading);
    life.transition(WorkerState::loading, "loading for 3 s");  // same state: the detail only
    CHECK(life.snapshot().detail == "loading for 3 s");
    life.transition(WorkerState::warming, "model loaded");
    life.transition(WorkerState::ready);
    CHECK(life.state() == WorkerState::ready);
    CHECK(life.snapshot().detail.empty());  // a new state starts without the old detail
    CHECK(seen == std::vector<std::pair<WorkerState, WorkerState>>{
                      {WorkerState::starting, WorkerState::loading},
                      {WorkerState::loading, WorkerState::warming},
                      {WorkerState::warming, WorkerState::ready}});
    CHECK(out.count("event=worker_state") == 3);
    CHECK(out.count("from=warming to=ready worker=7") == 1);
}

TEST_CASE("an illegal transition throws and changes nothing", "[lifecycle]") {
    Captured out;
    Lifecycle life(out.log, "supervisor", "worker_state", "worker_failed", {{"worker", "3"}});
    int observed = 0;
    life.observe([&](const Lifecycle::Change&) { ++observed; });
    CHECK_THROWS_AS(life.transition(WorkerState::ready), IllegalTransition);
    CHECK(life.state() == WorkerState::starting);
    CHECK(observed == 0);
    CHECK(out.count("event=illegal_transition") == 1);
    life.transition(WorkerState::draining);
    life.transition(WorkerState::stopped);
    try {
        life.transition(WorkerState::ready);
        FAIL("stopped -> ready was allowed");
    } catch (const IllegalTransition& e) {
        CHECK(e.from == WorkerState::stopped);
        CHECK(e.to == WorkerState::ready);
        CHECK(std::string(e.what()) == "3: illegal transition stopped -> ready");
    }
}

TEST_CASE("a failure is recorded by kind, logged and moves the state", "[lifecycle]") {
    Captured out;
    Lifecycle life(out.log, "supervisor", "upstream_state", "upstream_failed", {{"worker", "u0"}});
    life.transition(WorkerState::loading);
    life.fail(FailureKind::unresponsive, "unresponsive: 3 failed probes", {"last line"},
              WorkerState::backoff, "retrying");
    auto s = life.snapshot();
    CHECK(s.state == WorkerState::backoff);
    CHECK(s.detail == "retrying");
    CHECK(s.last_failure == "unresponsive: 3 failed probes");
    CHECK(s.last_output == std::vector<std::string>{"last line"});
    CHECK(s.failures.at(FailureKind::unresponsive) == 1);
    CHECK(out.count("event=upstream_failed") == 1);
    CHECK(out.count("kind=unresponsive") == 1);
    life.transition(WorkerState::starting);
    life.fail(FailureKind::unresponsive, "again", {}, WorkerState::backoff, "");
    CHECK(life.snapshot().failures.at(FailureKind::unresponsive) == 2);
    CHECK(life.snapshot().last_output.empty());
}
