// A worker's drain waits on the registry, which wakes it when the worker's last request ends
// (issue 17, item 3: events, not a 20 ms poll).
#include <atomic>
#include <catch2/catch.hpp>
#include <thread>

#include "common/random.hpp"
#include "proxy/backend_registry.hpp"
#include "test/support/registry_acquire.hpp"

using namespace llama_pool;
using namespace std::chrono_literals;

namespace {

// Runs wait_idle on its own thread. The tests that expect a wake-up give it a timeout of an
// hour: without the wake-up they hang until ctest's own timeout fails them.
constexpr auto kForever = std::chrono::hours(1);

struct Drain {
    std::atomic<bool> hurried{false};
    std::atomic<bool> returned{false};
    std::thread thread;

    Drain(const BackendRegistry& registry, const std::string& id, Duration timeout) {
        thread = std::thread([this, &registry, id, timeout] {
            registry.wait_idle(id, timeout, hurried);
            returned = true;
        });
    }
    ~Drain() {
        if (thread.joinable()) {
            thread.join();
        }
    }
};

}  // namespace

TEST_CASE("a drain ends when the worker's last request ends", "[registry][drain]") {
    SeededRandom random(1);
    SteadyTimeSource time;
    BackendRegistry registry(random, time);
    registry.worker_ready({"a", "127.0.0.1", 1, 2, ""});
    registry.worker_ready({"b", "127.0.0.1", 2, 2, ""});
    auto on_a = test::acquire(registry, Clock::now() + 1s, {"b"}, {});
    auto on_a_light = test::acquire_light(registry, Clock::now(), {"b"}, {});
    auto on_b = test::acquire(registry, Clock::now() + 1s, {"a"}, {});
    REQUIRE(on_a.lease);
    REQUIRE(on_a.lease->backend().id == "a");
    REQUIRE(on_a_light.lease);
    REQUIRE(on_a_light.lease->backend().id == "a");
    REQUIRE(on_b.lease);

    Drain drain(registry, "a", kForever);
    on_b.lease.reset();  // another worker's request: no reason to stop waiting
    on_a.lease.reset();  // a light request still runs on it
    CHECK_FALSE(drain.returned);
    on_a_light.lease.reset();
    drain.thread.join();
    CHECK(drain.returned);
    CHECK(registry.worker_inflight("a") == 0);
}

TEST_CASE("a hurried drain stops waiting for requests in flight", "[registry][drain]") {
    SeededRandom random(1);
    SteadyTimeSource time;
    BackendRegistry registry(random, time);
    registry.worker_ready({"a", "127.0.0.1", 1, 1, ""});
    auto held = test::acquire(registry, Clock::now() + 1s, {}, {});
    REQUIRE(held.lease);
    Drain drain(registry, "a", kForever);
    drain.hurried = true;
    registry.wake_idle_waiters();
    drain.thread.join();
    CHECK(drain.returned);
    CHECK(registry.worker_inflight("a") == 1);  // the request goes on; the drain is over
}

TEST_CASE("a drain gives up at its timeout", "[registry][drain]") {
    SeededRandom random(1);
    SteadyTimeSource time;
    BackendRegistry registry(random, time);
    registry.worker_ready({"a", "127.0.0.1", 1, 1, ""});
    auto held = test::acquire(registry, Clock::now() + 1s, {}, {});
    REQUIRE(held.lease);
    Drain drain(registry, "a", 50ms);
    drain.thread.join();
    CHECK(drain.returned);
    CHECK(registry.worker_inflight("a") == 1);  // it gave up; the request is still there
}
