#include <atomic>
#include <catch2/catch.hpp>
#include <thread>

#include "proxy/backend_registry.hpp"
#include "proxy/balancer.hpp"
#include "test/support/fakes.hpp"
#include "test/support/registry_acquire.hpp"
#include "test/support/test_process.hpp"

using namespace llama_pool;
using namespace std::chrono_literals;

TEST_CASE("least-loaded picks the lowest load relative to capacity", "[balancer]") {
    test::ScriptedRandom random({0.0});
    CHECK(choose_least_loaded({{1, 2}, {1, 4}}, random) == 1u);
    CHECK(choose_least_loaded({{0, 1}, {3, 4}}, random) == 0u);
    CHECK_FALSE(choose_least_loaded({{2, 2}, {4, 4}}, random).has_value());
    CHECK_FALSE(choose_least_loaded({}, random).has_value());
    CHECK_FALSE(choose_least_loaded({{0, 0}}, random).has_value());
}

TEST_CASE("avoided backends are used only when nothing else has room", "[balancer]") {
    test::ScriptedRandom random({0.0});
    CHECK(choose_least_loaded({{0, 4, true}, {3, 4, false}}, random) == 1u);
    CHECK(choose_least_loaded({{0, 4, true}, {4, 4, false}}, random) == 0u);
}

TEST_CASE("ties are broken at random between equally loaded backends", "[balancer]") {
    test::ScriptedRandom first({0.0, 0.0}), last({0.99, 0.99});
    const std::vector<BackendLoad> even = {{1, 2}, {1, 2}, {1, 2}};
    CHECK(choose_least_loaded(even, first) == 0u);
    CHECK(choose_least_loaded(even, last) == 2u);
}

TEST_CASE("the registry never leases more than a backend's capacity", "[registry]") {
    SeededRandom random(1);
    SteadyTimeSource time;
    BackendRegistry registry(random, time);
    registry.worker_ready({"a", "127.0.0.1", 1, 2, ""});
    auto l1 = test::acquire(registry, Clock::now() + 1s, {}, {});
    auto l2 = test::acquire(registry, Clock::now() + 1s, {}, {});
    REQUIRE(l1.lease);
    REQUIRE(l2.lease);
    CHECK(registry.worker_inflight("a") == 2);
    auto l3 = test::acquire(registry, Clock::now() + 30ms, {}, {});
    CHECK(l3.status == BackendRegistry::AcquireStatus::timeout);
    l1.lease.reset();
    CHECK(registry.worker_inflight("a") == 1);
}

TEST_CASE("a freed slot goes to the oldest waiter", "[registry]") {
    SeededRandom random(1);
    SteadyTimeSource time;
    BackendRegistry registry(random, time);
    registry.worker_ready({"a", "127.0.0.1", 1, 1, ""});
    auto held = test::acquire(registry, Clock::now() + 1s, {}, {});
    REQUIRE(held.lease);
    std::vector<int> order;
    std::mutex order_mutex;
    auto waiter = [&](int n) {
        auto r = test::acquire(registry, Clock::now() + 10s, {}, {});
        REQUIRE(r.lease);
        std::lock_guard lock(order_mutex);
        order.push_back(n);
    };
    std::thread first(waiter, 1);
    REQUIRE(test::wait_until([&] { return registry.waiting() == 1; }, 5s));
    std::thread second(waiter, 2);
    REQUIRE(test::wait_until([&] { return registry.waiting() == 2; }, 5s));
    held.lease.reset();  // the first waiter gets it, releases it, then the second
    first.join();
    second.join();
    CHECK(order == std::vector<int>{1, 2});
}

TEST_CASE("requests wait while no backend is ready and proceed when one becomes ready",
          "[registry]") {
    SeededRandom random(1);
    SteadyTimeSource time;
    BackendRegistry registry(random, time);
    std::atomic<bool> got{false};
    std::thread t([&] {
        auto r = test::acquire(registry, Clock::now() + 10s, {}, {});
        got = r.lease.has_value();
    });
    REQUIRE(test::wait_until([&] { return registry.waiting() == 1; }, 5s));
    CHECK_FALSE(got);
    registry.worker_ready({"a", "127.0.0.1", 1, 1, ""});
    t.join();
    CHECK(got);
}

TEST_CASE("a cancelled waiter leaves the queue at once", "[registry]") {
    SeededRandom random(1);
    SteadyTimeSource time;
    BackendRegistry registry(random, time);
    std::atomic<bool> cancel{false};
    BackendRegistry::AcquireStatus status{};
    std::thread t([&] {
        status =
            test::acquire(registry, Clock::now() + 60s, {}, [&] { return cancel.load(); }).status;
    });
    REQUIRE(test::wait_until([&] { return registry.waiting() == 1; }, 5s));
    cancel = true;
    REQUIRE(test::wait_until([&] { return registry.waiting() == 0; }, 2s));
    t.join();
    CHECK(status == BackendRegistry::AcquireStatus::cancelled);
}

TEST_CASE("an unavailable backend takes no new leases while its in-flight ones finish",
          "[registry]") {
    SeededRandom random(1);
    SteadyTimeSource time;
    BackendRegistry registry(random, time);
    registry.worker_ready({"a", "127.0.0.1", 1, 2, ""});
    auto held = test::acquire(registry, Clock::now() + 1s, {}, {});
    REQUIRE(held.lease);
    registry.worker_unavailable("a");
    CHECK(test::acquire(registry, Clock::now() + 20ms, {}, {}).status ==
          BackendRegistry::AcquireStatus::timeout);
    CHECK(registry.worker_inflight("a") == 1);
    held.lease.reset();
    CHECK(registry.worker_inflight("a") == 0);
}

namespace {

struct RegistryWithFakeTime {
    explicit RegistryWithFakeTime(RegistryOptions options = {}) : registry(random, time, options) {}
    SeededRandom random{7};
    test::FakeTime time;
    BackendRegistry registry;
};

}  // namespace

TEST_CASE("the queue is bounded: beyond queue_max a request is refused at once", "[registry]") {
    RegistryOptions options;
    options.queue_max = 1;
    RegistryWithFakeTime r(options);
    std::atomic<bool> done{false};
    std::thread waiter(
        [&] { test::acquire(r.registry, Clock::now() + 5s, {}, [&] { return done.load(); }); });
    REQUIRE(test::wait_until([&] { return r.registry.waiting() == 1; }, 5s));
    const auto second = test::acquire(r.registry, Clock::now() + 5s, {}, {});
    CHECK(second.status == BackendRegistry::AcquireStatus::queue_full);
    done = true;
    waiter.join();
}

TEST_CASE("a worker that keeps failing is ejected and traffic moves to the other", "[registry]") {
    RegistryOptions options;
    options.breaker.consecutive_failures = 3;
    options.breaker.base_ejection = 10s;
    RegistryWithFakeTime r(options);
    r.registry.worker_ready({"bad", "127.0.0.1", 1, 4, ""});
    r.registry.worker_ready({"good", "127.0.0.1", 2, 4, ""});
    for (int i = 0; i < 3; ++i) {
        r.registry.report("bad", false);
    }
    for (int i = 0; i < 20; ++i) {
        auto lease = test::acquire(r.registry, Clock::now() + 1s, {}, {});
        REQUIRE(lease.lease);
        CHECK(lease.lease->backend().id == "good");
    }
    // Just before the ejection ends it is still out; at its end it gets a trial request.
    r.time.advance(10s - 1ms);
    auto busy = std::vector<BackendRegistry::AcquireResult>();
    for (int i = 0; i < 4; ++i) {
        busy.push_back(test::acquire(r.registry, Clock::now() + 1s, {}, {}));
        CHECK(busy.back().lease->backend().id == "good");
    }
    r.time.advance(1ms);
    const auto trial = test::acquire(r.registry, Clock::now() + 1s, {}, {});
    REQUIRE(trial.lease);
    CHECK(trial.lease->backend().id == "bad");
}

TEST_CASE("a trial request abandoned by its client does not keep its worker out of rotation",
          "[registry]") {
    RegistryOptions options;
    options.breaker.consecutive_failures = 1;
    options.breaker.base_ejection = 10s;
    RegistryWithFakeTime r(options);
    r.registry.worker_ready({"w", "127.0.0.1", 1, 4, ""});
    r.registry.report("w", false);
    r.time.advance(10s);
    {
        const auto trial = test::acquire(r.registry, Clock::now() + 1s, {}, {});
        REQUIRE(trial.lease);
        // While the trial runs, nothing else goes there.
        CHECK_FALSE(test::acquire(r.registry, Clock::now() + 20ms, {}, {}).lease);
        r.registry.report_abandoned("w");  // its client left before any verdict
    }
    const auto next = test::acquire(r.registry, Clock::now() + 1s, {}, {});
    REQUIRE(next.lease);
    CHECK(next.lease->backend().id == "w");
}

TEST_CASE("when every worker is ejected the least bad one still serves", "[registry]") {
    RegistryOptions options;
    options.breaker.consecutive_failures = 1;
    options.breaker.base_ejection = 10s;
    RegistryWithFakeTime r(options);
    r.registry.worker_ready({"a", "127.0.0.1", 1, 1, ""});
    r.registry.report("a", false);
    r.time.advance(1s);
    r.registry.worker_ready({"b", "127.0.0.1", 2, 1, ""});
    r.registry.report("b", false);
    // Both open; "a" is due back first.
    const auto lease = test::acquire(r.registry, Clock::now() + 1s, {}, {});
    REQUIRE(lease.lease);
    CHECK(lease.lease->backend().id == "a");
}

TEST_CASE("prefix affinity sends the same prefix to the same worker and spills when it is full",
          "[registry]") {
    RegistryOptions options;
    options.policy = BalancerPolicy::prefix_affinity;
    RegistryWithFakeTime r(options);
    r.registry.worker_ready({"a", "127.0.0.1", 1, 1, ""});
    r.registry.worker_ready({"b", "127.0.0.1", 2, 1, ""});
    r.registry.worker_ready({"c", "127.0.0.1", 3, 1, ""});
    const std::uint64_t key = 0x1234567890abcdefULL;
    std::string preferred;
    for (int i = 0; i < 5; ++i) {
        const auto lease = test::acquire(r.registry, Clock::now() + 1s, {}, {}, key);
        REQUIRE(lease.lease);
        if (preferred.empty()) {
            preferred = lease.lease->backend().id;
        }
        CHECK(lease.lease->backend().id == preferred);
    }
    const auto held = test::acquire(r.registry, Clock::now() + 1s, {}, {}, key);
    const auto spilled = test::acquire(r.registry, Clock::now() + 1s, {}, {}, key);
    REQUIRE(spilled.lease);
    CHECK(spilled.lease->backend().id != preferred);
}

TEST_CASE("round-robin takes each worker in turn", "[registry]") {
    RegistryOptions options;
    options.policy = BalancerPolicy::round_robin;
    RegistryWithFakeTime r(options);
    r.registry.worker_ready({"a", "127.0.0.1", 1, 8, ""});
    r.registry.worker_ready({"b", "127.0.0.1", 2, 8, ""});
    std::vector<std::string> order;
    for (int i = 0; i < 4; ++i) {
        order.push_back(test::acquire(r.registry, Clock::now() + 1s, {}, {}).lease->backend().id);
    }
    CHECK(order == std::vector<std::string>{"a", "b", "a", "b"});
}

TEST_CASE(
    "regression: a retry waits for a busy worker instead of returning to the one that failed it",
    "[registry]") {
    RegistryWithFakeTime r;
    r.registry.worker_ready({"dead", "127.0.0.1", 1, 2, ""});
    r.registry.worker_ready({"busy", "127.0.0.1", 2, 1, ""});
    auto held = test::acquire(r.registry, Clock::now() + 1s, {"dead"}, {});
    REQUIRE(held.lease);
    REQUIRE(held.lease->backend().id == "busy");
    // "dead" has free slots (its requests fail fast), "busy" has none: the retry waits.
    const auto retry = test::acquire(r.registry, Clock::now() + 50ms, {"dead"}, {});
    CHECK(retry.status == BackendRegistry::AcquireStatus::timeout);
    // With no other worker at all, the tried one is still better than nothing.
    r.registry.worker_unavailable("busy");
    const auto last_resort = test::acquire(r.registry, Clock::now() + 50ms, {"dead"}, {});
    REQUIRE(last_resort.lease);
    CHECK(last_resort.lease->backend().id == "dead");
}

TEST_CASE("weights shift least-loaded traffic without exceeding slots", "[balancer]") {
    test::ScriptedRandom random({0.0});
    // Equal weights: the lowest load wins, as without weights.
    CHECK(choose_least_loaded({{1, 4, false, 1}, {0, 4, false, 1}}, random) == 1u);
    // Weight 3 keeps winning until its free share drops under a third of the other's.
    CHECK(choose_least_loaded({{0, 4, false, 1}, {2, 4, false, 3}}, random) == 1u);
    CHECK(choose_least_loaded({{0, 4, false, 1}, {3, 4, false, 3}}, random) == 0u);
    // A full backend is never chosen, whatever its weight.
    CHECK(choose_least_loaded({{4, 4, false, 100}, {3, 4, false, 1}}, random) == 1u);
}

TEST_CASE("the retry budget's floor counts the slots of workers that just went away",
          "[registry]") {
    test::ScriptedRandom random({0.5});
    test::FakeTime time;
    BackendRegistry registry(random, time);
    registry.worker_ready({"a", "127.0.0.1", 1, 2, ""});
    registry.worker_ready({"b", "127.0.0.1", 2, 3, ""});
    CHECK(registry.total_capacity() == 5);
    CHECK(registry.configured_capacity() == 5);
    // b dies: its requests are the retries to allow, though its slots serve nobody now.
    registry.worker_unavailable("b");
    CHECK(registry.total_capacity() == 2);
    CHECK(registry.configured_capacity() == 5);
    registry.worker_removed("b");
    CHECK(registry.configured_capacity() == 2);
}

TEST_CASE("a lease on a removed upstream does not release a slot of its successor", "[registry]") {
    // Issue 17, item 2: a discovered address removed and found again gets a new entry under
    // the same id; the requests still running on the old one must not lower its count.
    test::ScriptedRandom random({0.5});
    test::FakeTime time;
    BackendRegistry registry(random, time);
    const std::string id = "u0/10.0.0.1";
    registry.worker_ready({id, "10.0.0.1", 8080, 2, ""});
    auto old = test::acquire(registry, Clock::now() + 1s, {}, {});
    REQUIRE(old.lease);
    registry.worker_removed(id);
    registry.worker_ready({id, "10.0.0.1", 8080, 2, ""});
    auto fresh = test::acquire(registry, Clock::now() + 1s, {}, {});
    REQUIRE(fresh.lease);
    CHECK(registry.worker_inflight(id) == 1);
    old.lease.reset();
    CHECK(registry.worker_inflight(id) == 1);
    // Its capacity is still what it says: one more request fits, not two.
    auto second = test::acquire(registry, Clock::now() + 1s, {}, {});
    REQUIRE(second.lease);
    CHECK(registry.worker_inflight(id) == 2);
    fresh.lease.reset();
    second.lease.reset();
    CHECK(registry.worker_inflight(id) == 0);
}
