// Requests that take no generation slot: which they are, and how the registry bounds them.
#include <atomic>
#include <catch2/catch.hpp>
#include <thread>

#include "common/random.hpp"
#include "proxy/backend_registry.hpp"
#include "proxy/slot_use.hpp"
#include "test/support/registry_acquire.hpp"

using namespace llama_pool;
using namespace std::chrono_literals;

namespace {

RegistryOptions light_cap(int n) {
    RegistryOptions options;
    options.light_per_worker = n;
    return options;
}

// Waits (without sleeping) until `done` holds; the registry's waiters register quickly.
template <typename F>
bool eventually(F done) {
    const auto until = Clock::now() + 10s;
    while (!done()) {
        if (Clock::now() > until) {
            return false;
        }
        std::this_thread::yield();
    }
    return true;
}

}  // namespace

TEST_CASE("only llama-server's slot-free endpoints are light", "[registry][light]") {
    CHECK(slot_use("POST", "/tokenize") == SlotUse::light);
    CHECK(slot_use("POST", "/detokenize") == SlotUse::light);
    CHECK(slot_use("POST", "/apply-template") == SlotUse::light);
    CHECK(slot_use("GET", "/props") == SlotUse::light);
    CHECK(slot_use("GET", "/health") == SlotUse::light);
    CHECK(slot_use("GET", "/v1/models") == SlotUse::light);
    CHECK(slot_use("GET", "/slots") == SlotUse::light);
    CHECK(slot_use("POST", "/completion") == SlotUse::generation);
    CHECK(slot_use("POST", "/v1/chat/completions") == SlotUse::generation);
    CHECK(slot_use("POST", "/v1/embeddings") == SlotUse::generation);
    CHECK(slot_use("POST", "/embedding") == SlotUse::generation);
    CHECK(slot_use("POST", "/infill") == SlotUse::generation);
    CHECK(slot_use("POST", "/slots/0") == SlotUse::generation);  // save/restore a slot's cache
    CHECK(slot_use("POST", "/v1/models") == SlotUse::generation);
    CHECK(slot_use("POST", "/something-new") == SlotUse::generation);
}

TEST_CASE("a light request does not wait behind generations", "[registry][light]") {
    SeededRandom random(1);
    SteadyTimeSource time;
    BackendRegistry registry(random, time, light_cap(2));
    registry.worker_ready({"a", "127.0.0.1", 1, 1, ""});
    auto held = test::acquire(registry, Clock::now() + 1s, {}, {});
    REQUIRE(held.lease);
    std::atomic<bool> queued_done{false};
    std::thread queued([&] {
        auto r = test::acquire(registry, Clock::now() + 10s, {}, {});
        queued_done = true;
    });
    REQUIRE(eventually([&] { return registry.waiting() == 1; }));

    auto light = test::acquire_light(registry, Clock::now(), {}, {});
    CHECK(light.status == BackendRegistry::AcquireStatus::ok);
    REQUIRE(light.lease);
    CHECK(light.lease->backend().id == "a");
    CHECK(registry.worker_inflight("a") == 2);  // one slot, one light
    CHECK_FALSE(queued_done);                   // the light lease took no slot
    light.lease.reset();
    CHECK(registry.worker_inflight("a") == 1);
    held.lease.reset();
    queued.join();
    CHECK(queued_done);
}

TEST_CASE("light requests are capped per worker and wait for one another", "[registry][light]") {
    SeededRandom random(1);
    SteadyTimeSource time;
    BackendRegistry registry(random, time, light_cap(2));
    registry.worker_ready({"a", "127.0.0.1", 1, 4, ""});
    auto l1 = test::acquire_light(registry, Clock::now(), {}, {});
    auto l2 = test::acquire_light(registry, Clock::now(), {}, {});
    REQUIRE(l1.lease);
    REQUIRE(l2.lease);
    CHECK(test::acquire_light(registry, Clock::now(), {}, {}).status ==
          BackendRegistry::AcquireStatus::timeout);
    // Slots are untouched by light requests.
    CHECK(test::acquire(registry, Clock::now(), {}, {}).lease.has_value());

    std::atomic<bool> served{false};
    std::thread waiter([&] {
        auto r = test::acquire_light(registry, Clock::now() + 10s, {}, {});
        served = r.lease.has_value();
    });
    REQUIRE(eventually([&] { return registry.waiting() == 1; }));
    l1.lease.reset();
    waiter.join();
    CHECK(served);
    CHECK(registry.waiting() == 0);
}

TEST_CASE("a light request goes to the least busy worker it has not tried", "[registry][light]") {
    SeededRandom random(1);
    SteadyTimeSource time;
    BackendRegistry registry(random, time, light_cap(4));
    registry.worker_ready({"a", "127.0.0.1", 1, 1, ""});
    registry.worker_ready({"b", "127.0.0.1", 2, 1, ""});
    auto first = test::acquire_light(registry, Clock::now(), {}, {});
    REQUIRE(first.lease);
    const auto other = first.lease->backend().id == "a" ? "b" : "a";
    auto second = test::acquire_light(registry, Clock::now(), {}, {});
    REQUIRE(second.lease);
    CHECK(second.lease->backend().id == other);
    // A retry avoids the worker that failed it while another one can take it.
    auto retry = test::acquire_light(registry, Clock::now(), {other}, {});
    REQUIRE(retry.lease);
    CHECK(retry.lease->backend().id != other);
}

TEST_CASE("a light request for a group with no worker wakes its scaler and waits",
          "[registry][light]") {
    SeededRandom random(1);
    SteadyTimeSource time;
    BackendRegistry registry(random, time, light_cap(2));
    std::atomic<int> hooks{0};
    registry.set_activity_hook([&](BackendRegistry::Activity activity) {
        if (activity == BackendRegistry::Activity::waiting) {
            ++hooks;
        }
    });
    std::atomic<bool> served{false};
    std::thread waiter([&] {
        auto r = test::acquire_light(registry, Clock::now() + 10s, {}, {});
        served = r.lease.has_value();
    });
    REQUIRE(eventually([&] { return registry.waiting() == 1; }));
    CHECK(hooks >= 1);
    registry.worker_ready({"a", "127.0.0.1", 1, 1, ""});
    waiter.join();
    CHECK(served);
}

TEST_CASE("a light lease on a removed worker does not touch its successor", "[registry][light]") {
    SeededRandom random(1);
    SteadyTimeSource time;
    BackendRegistry registry(random, time, light_cap(2));
    registry.worker_ready({"a", "127.0.0.1", 1, 1, ""});
    auto old = test::acquire_light(registry, Clock::now(), {}, {});
    REQUIRE(old.lease);
    registry.worker_removed("a");
    registry.worker_ready({"a", "127.0.0.1", 2, 1, ""});
    auto fresh = test::acquire_light(registry, Clock::now(), {}, {});
    REQUIRE(fresh.lease);
    old.lease.reset();
    CHECK(registry.worker_inflight("a") == 1);
}
