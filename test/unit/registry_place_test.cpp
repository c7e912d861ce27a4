// A request waiting in the queue from an event loop: a Place whose descriptor turns readable
// when it is served (issue 18: no thread held per queued request).
#include <poll.h>
#include <sys/eventfd.h>

#include <catch2/catch.hpp>

#include "common/random.hpp"
#include "proxy/backend_registry.hpp"

using namespace llama_pool;
using namespace std::chrono_literals;

namespace {

bool readable(int fd) {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, 0) > 0;
}

struct Pool {
    SeededRandom random{1};
    SteadyTimeSource time;
    BackendRegistry registry;
    explicit Pool(RegistryOptions options = {}) : registry(random, time, options) {
        registry.worker_ready({"w", "127.0.0.1", 1, 1, ""});
    }
};

}  // namespace

TEST_CASE("a free slot is taken at once, a busy pool queues a place", "[registry][place]") {
    Pool pool;
    const TenantTicket tenant;
    std::unique_ptr<BackendRegistry::Place> place;
    auto first = pool.registry.try_acquire({}, 0, tenant, place);
    REQUIRE(first.status == BackendRegistry::AcquireStatus::ok);
    REQUIRE(first.lease);
    CHECK_FALSE(place);

    auto second = pool.registry.try_acquire({}, 0, tenant, place);
    CHECK_FALSE(second.lease);
    REQUIRE(place);
    CHECK(pool.registry.waiting() == 1);
    CHECK_FALSE(readable(place->fd()));
    CHECK_FALSE(place->take());

    first.lease.reset();  // the slot goes to the place
    CHECK(readable(place->fd()));
    auto served = place->take();
    REQUIRE(served);
    CHECK(served->status == BackendRegistry::AcquireStatus::ok);
    REQUIRE(served->lease);
    CHECK(served->lease->backend().id == "w");
    CHECK(pool.registry.waiting() == 0);
    CHECK_FALSE(readable(place->fd()));  // take() consumed the wake-up
    CHECK(pool.registry.worker_inflight("w") == 1);
}

TEST_CASE("a place given up leaves the queue, or passes on the slot it was handed",
          "[registry][place]") {
    Pool pool;
    const TenantTicket tenant;
    std::unique_ptr<BackendRegistry::Place> first_place;
    std::unique_ptr<BackendRegistry::Place> second_place;
    auto running = pool.registry.try_acquire({}, 0, tenant, first_place);
    REQUIRE(running.lease);
    pool.registry.try_acquire({}, 0, tenant, first_place);
    pool.registry.try_acquire({}, 0, tenant, second_place);
    REQUIRE(first_place);
    REQUIRE(second_place);
    CHECK(pool.registry.waiting() == 2);

    SECTION("withdrawn before it was served") {
        first_place.reset();
        CHECK(pool.registry.waiting() == 1);
        running.lease.reset();
        CHECK(readable(second_place->fd()));
        auto served = second_place->take();
        REQUIRE(served);
        CHECK(served->lease);
    }
    SECTION("served, then dropped without taking the slot") {
        running.lease.reset();  // handed to the first place
        CHECK(readable(first_place->fd()));
        CHECK_FALSE(readable(second_place->fd()));
        first_place.reset();  // gives the slot back: the next place gets it
        CHECK(readable(second_place->fd()));
        auto served = second_place->take();
        REQUIRE(served);
        CHECK(served->lease);
        CHECK(pool.registry.worker_inflight("w") == 1);
    }
}

TEST_CASE("a place's descriptor serves the next place, a wake-up left on it costs one empty take",
          "[registry][place]") {
    Pool pool;
    const TenantTicket tenant;
    std::unique_ptr<BackendRegistry::Place> first;
    auto running = pool.registry.try_acquire({}, 0, tenant, first);
    REQUIRE(running.lease);
    pool.registry.try_acquire({}, 0, tenant, first);
    REQUIRE(first);
    const int fd = first->fd();

    SECTION("a place served and taken") {
        running.lease.reset();
        auto served = first->take();
        REQUIRE(served);
        REQUIRE(served->lease);
        first.reset();
        // Had the descriptor been closed, this would take its number.
        const Fd other(::eventfd(0, EFD_CLOEXEC));
        CHECK(other.get() != fd);
        std::unique_ptr<BackendRegistry::Place> next;
        pool.registry.try_acquire({}, 0, tenant, next);
        REQUIRE(next);
        CHECK(next->fd() == fd);  // the same eventfd, kept by the registry
        CHECK_FALSE(readable(next->fd()));
        served->lease.reset();
        CHECK(readable(next->fd()));
        CHECK(next->take());
    }
    SECTION("a place handed a slot and dropped before taking it") {
        running.lease.reset();  // handed to `first`, whose descriptor now says so
        first.reset();          // the slot comes back free; the descriptor is kept, readable
        auto again = pool.registry.try_acquire({}, 0, tenant, first);
        REQUIRE(again.lease);  // the free slot
        std::unique_ptr<BackendRegistry::Place> next;
        pool.registry.try_acquire({}, 0, tenant, next);
        REQUIRE(next);
        CHECK(next->fd() == fd);
        // The old wake-up: one take() that finds nothing, and clears it.
        CHECK(readable(next->fd()));
        CHECK_FALSE(next->take());
        CHECK_FALSE(readable(next->fd()));
        again.lease.reset();  // now it is served for real
        CHECK(readable(next->fd()));
        auto served = next->take();
        REQUIRE(served);
        CHECK(served->lease);
    }
}

TEST_CASE("a full queue refuses, and a shutdown ends a waiting place", "[registry][place]") {
    RegistryOptions options;
    options.queue_max = 1;
    Pool pool(options);
    const TenantTicket tenant;
    std::unique_ptr<BackendRegistry::Place> place;
    std::unique_ptr<BackendRegistry::Place> refused;
    auto running = pool.registry.try_acquire({}, 0, tenant, place);
    REQUIRE(running.lease);
    pool.registry.try_acquire({}, 0, tenant, place);
    REQUIRE(place);
    auto full = pool.registry.try_acquire({}, 0, tenant, refused);
    CHECK(full.status == BackendRegistry::AcquireStatus::queue_full);
    CHECK_FALSE(refused);

    pool.registry.shutdown();
    CHECK(readable(place->fd()));
    auto ended = place->take();
    REQUIRE(ended);
    CHECK(ended->status == BackendRegistry::AcquireStatus::shutdown);
    CHECK_FALSE(ended->lease);
    CHECK(pool.registry.waiting() == 0);
}

TEST_CASE("a light place waits for a connection and counts as waiting", "[registry][place]") {
    RegistryOptions options;
    options.light_per_worker = 1;
    Pool pool(options);
    std::unique_ptr<BackendRegistry::Place> place;
    auto running = pool.registry.try_acquire_light({}, place);
    REQUIRE(running.lease);
    CHECK_FALSE(place);
    pool.registry.try_acquire_light({}, place);
    REQUIRE(place);
    CHECK(pool.registry.waiting() == 1);
    CHECK_FALSE(place->take());

    running.lease.reset();
    CHECK(readable(place->fd()));
    auto served = place->take();
    REQUIRE(served);
    REQUIRE(served->lease);
    CHECK(pool.registry.waiting() == 0);
    place.reset();  // after it was served: nothing more to give back
    CHECK(pool.registry.worker_inflight("w") == 1);
}

TEST_CASE("a freed light connection goes to the oldest light place only", "[registry][place]") {
    // Waking every light waiter for one connection made them all fight for the registry's
    // lock (measured: a fifth of the pool's CPU on /tokenize at 16 connections).
    RegistryOptions options;
    options.light_per_worker = 1;
    Pool pool(options);
    std::unique_ptr<BackendRegistry::Place> older;
    std::unique_ptr<BackendRegistry::Place> newer;
    auto running = pool.registry.try_acquire_light({}, older);
    REQUIRE(running.lease);
    pool.registry.try_acquire_light({}, older);
    pool.registry.try_acquire_light({}, newer);
    REQUIRE(older);
    REQUIRE(newer);
    CHECK(pool.registry.waiting() == 2);

    running.lease.reset();
    CHECK(readable(older->fd()));
    CHECK_FALSE(readable(newer->fd()));
    CHECK(pool.registry.waiting() == 1);

    older.reset();  // its client left before it took the connection: the next place gets it
    CHECK(readable(newer->fd()));
    auto served = newer->take();
    REQUIRE(served);
    CHECK(served->lease);
    CHECK(pool.registry.worker_inflight("w") == 1);
}

TEST_CASE("the activity hook says when a request starts waiting and when the pool goes idle",
          "[registry][place][groups]") {
    Pool pool;
    std::vector<BackendRegistry::Activity> seen;
    pool.registry.set_activity_hook([&](BackendRegistry::Activity a) { seen.push_back(a); });
    const TenantTicket tenant;
    std::unique_ptr<BackendRegistry::Place> place;
    auto first = pool.registry.try_acquire({}, 0, tenant, place);
    REQUIRE(first.lease);
    CHECK(seen.empty());  // served at once: nothing for a scaler
    auto second = pool.registry.try_acquire({}, 0, tenant, place);
    REQUIRE(place);
    REQUIRE(seen.size() == 1);
    CHECK(seen[0] == BackendRegistry::Activity::waiting);

    first.lease.reset();  // handed to the place: one request still in flight
    CHECK(seen.size() == 1);
    auto served = place->take();
    REQUIRE(served);
    REQUIRE(served->lease);
    served->lease.reset();  // the last one in flight ends
    REQUIRE(seen.size() == 2);
    CHECK(seen[1] == BackendRegistry::Activity::idle);
}
