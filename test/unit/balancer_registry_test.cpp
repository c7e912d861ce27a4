#include <atomic>
#include <catch2/catch.hpp>
#include <thread>

#include "proxy/backend_registry.hpp"
#include "proxy/balancer.hpp"
#include "test/support/fakes.hpp"
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
    BackendRegistry registry(random);
    registry.worker_ready({"a", "127.0.0.1", 1, 2, ""});
    auto l1 = registry.acquire(Clock::now() + 1s, {}, {});
    auto l2 = registry.acquire(Clock::now() + 1s, {}, {});
    REQUIRE(l1.lease);
    REQUIRE(l2.lease);
    CHECK(registry.worker_inflight("a") == 2);
    auto l3 = registry.acquire(Clock::now() + 30ms, {}, {});
    CHECK(l3.status == BackendRegistry::AcquireStatus::timeout);
    l1.lease.reset();
    CHECK(registry.worker_inflight("a") == 1);
}

TEST_CASE("a freed slot goes to the oldest waiter", "[registry]") {
    SeededRandom random(1);
    BackendRegistry registry(random);
    registry.worker_ready({"a", "127.0.0.1", 1, 1, ""});
    auto held = registry.acquire(Clock::now() + 1s, {}, {});
    REQUIRE(held.lease);
    std::vector<int> order;
    std::mutex order_mutex;
    auto waiter = [&](int n) {
        auto r = registry.acquire(Clock::now() + 10s, {}, {});
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
    BackendRegistry registry(random);
    std::atomic<bool> got{false};
    std::thread t([&] {
        auto r = registry.acquire(Clock::now() + 10s, {}, {});
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
    BackendRegistry registry(random);
    std::atomic<bool> cancel{false};
    BackendRegistry::AcquireStatus status{};
    std::thread t([&] {
        status = registry.acquire(Clock::now() + 60s, {}, [&] { return cancel.load(); }).status;
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
    BackendRegistry registry(random);
    registry.worker_ready({"a", "127.0.0.1", 1, 2, ""});
    auto held = registry.acquire(Clock::now() + 1s, {}, {});
    REQUIRE(held.lease);
    registry.worker_unavailable("a");
    CHECK(registry.acquire(Clock::now() + 20ms, {}, {}).status ==
          BackendRegistry::AcquireStatus::timeout);
    CHECK(registry.worker_inflight("a") == 1);
    held.lease.reset();
    CHECK(registry.worker_inflight("a") == 0);
}
