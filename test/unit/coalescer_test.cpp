// Idempotency-Key coalescing: who leads, who attaches, replays within the window, conflicts,
// bounds. Pure code on a fake clock; the one blocking wait is exercised without sleeping.
#include "proxy/coalescer.hpp"

#include <catch2/catch.hpp>
#include <memory>
#include <string>
#include <thread>

#include "test/support/fakes.hpp"

using namespace llama_pool;
using namespace std::chrono_literals;
using llama_pool::test::FakeTime;
using Role = Coalescer::Role;

namespace {

std::shared_ptr<const StoredReply> reply_of(int status, std::string body) {
    auto r = std::make_shared<StoredReply>();
    r->status = status;
    r->body = std::move(body);
    return r;
}

CoalescerLimits limits(Duration window = 60s, std::size_t max_bytes = 1 << 20) {
    return CoalescerLimits{window, max_bytes};
}

// A wait that must not block: the flight is already done, or the deadline already passed.
Flight::WaitStatus wait_now(const Flight& flight) {
    return flight.wait(Clock::now(), 1ms, {});
}

}  // namespace

TEST_CASE("the first request with a key leads, and the same key while it runs attaches to it",
          "[coalescer]") {
    FakeTime time;
    Coalescer c(limits(), time);
    const auto lead = c.join("client-a/k1", 7, "req-1");
    REQUIRE(lead.role == Role::lead);
    REQUIRE(lead.flight);
    CHECK(lead.flight->leader_request_id() == "req-1");
    const auto follower = c.join("client-a/k1", 7, "req-2");
    REQUIRE(follower.role == Role::attach);
    CHECK(follower.flight == lead.flight);
    CHECK(wait_now(*follower.flight) == Flight::WaitStatus::timeout);
    CHECK(c.stats().in_flight == 1);

    c.finish("client-a/k1", lead, reply_of(200, "the reply"), true);
    CHECK(wait_now(*follower.flight) == Flight::WaitStatus::done);
    REQUIRE(follower.flight->reply());
    CHECK(follower.flight->reply()->body == "the reply");
    CHECK(c.stats().in_flight == 0);
    CHECK(c.stats().completed == 1);
}

TEST_CASE("an attached request blocked in wait() gets the reply when the leader finishes",
          "[coalescer]") {
    FakeTime time;
    Coalescer c(limits(), time);
    const auto lead = c.join("s", 1, "req-1");
    const auto follower = c.join("s", 1, "req-2");
    Flight::WaitStatus status = Flight::WaitStatus::timeout;
    std::thread waiter([&] { status = follower.flight->wait(Clock::now() + 30s, 5ms, {}); });
    c.finish("s", lead, reply_of(200, "r"), true);
    waiter.join();
    CHECK(status == Flight::WaitStatus::done);
    CHECK(follower.flight->reply()->body == "r");
}

TEST_CASE("a waiting request stops when its stop condition says so", "[coalescer]") {
    FakeTime time;
    Coalescer c(limits(), time);
    const auto lead = c.join("s", 1, "req-1");
    const auto follower = c.join("s", 1, "req-2");
    CHECK(follower.flight->wait(Clock::now() + 30s, 1ms, [] { return true; }) ==
          Flight::WaitStatus::stopped);
    c.finish("s", lead, nullptr, false);
}

TEST_CASE("a finished key replays its reply for the window, and leads again after it",
          "[coalescer]") {
    FakeTime time;
    Coalescer c(limits(10s), time);
    const auto lead = c.join("s", 1, "req-1");
    c.finish("s", lead, reply_of(200, "first"), true);

    time.advance(10s - 1ms);
    const auto replay = c.join("s", 1, "req-2");
    REQUIRE(replay.role == Role::replay);
    CHECK(replay.reply->body == "first");
    CHECK(c.stats().completed == 1);

    time.advance(1ms);  // the window is measured from the end, and a replay does not extend it
    CHECK(c.stats().completed == 0);
    const auto again = c.join("s", 1, "req-3");
    CHECK(again.role == Role::lead);
    c.finish("s", again, reply_of(200, "second"), true);
    CHECK(c.join("s", 1, "req-4").reply->body == "second");
}

TEST_CASE("the same key with a different request is a conflict, in flight or finished",
          "[coalescer]") {
    FakeTime time;
    Coalescer c(limits(), time);
    const auto lead = c.join("s", 1, "req-1");
    CHECK(c.join("s", 2, "req-2").role == Role::conflict);
    c.finish("s", lead, reply_of(200, "r"), true);
    CHECK(c.join("s", 2, "req-3").role == Role::conflict);
    CHECK(c.join("s", 1, "req-4").role == Role::replay);  // the conflict changed nothing
}

TEST_CASE("keys are per scope: two clients using the same key never meet", "[coalescer]") {
    FakeTime time;
    Coalescer c(limits(), time);
    const auto a = c.join("key:A|k", 1, "req-1");
    const auto b = c.join("key:B|k", 1, "req-2");
    CHECK(a.role == Role::lead);
    CHECK(b.role == Role::lead);
    CHECK(a.flight != b.flight);
    c.finish("key:A|k", a, reply_of(200, "for A"), true);
    c.finish("key:B|k", b, reply_of(200, "for B"), true);
    CHECK(c.join("key:A|k", 1, "req-3").reply->body == "for A");
    CHECK(c.join("key:B|k", 1, "req-4").reply->body == "for B");
}

TEST_CASE("a leader without a complete reply frees the key, and its followers join anew",
          "[coalescer]") {
    FakeTime time;
    Coalescer c(limits(), time);
    const auto lead = c.join("s", 1, "req-1");
    const auto follower = c.join("s", 1, "req-2");
    c.finish("s", lead, nullptr, false);
    CHECK(wait_now(*follower.flight) == Flight::WaitStatus::done);
    CHECK_FALSE(follower.flight->reply());
    const auto next = c.join("s", 1, "req-2");
    CHECK(next.role == Role::lead);  // the follower leads the next attempt
    c.finish("s", next, reply_of(200, "ok"), true);
}

TEST_CASE("a reply not kept goes to the attached requests, and the next one runs afresh",
          "[coalescer]") {
    FakeTime time;
    Coalescer c(limits(), time);
    const auto lead = c.join("s", 1, "req-1");
    const auto follower = c.join("s", 1, "req-2");
    c.finish("s", lead, reply_of(503, "queue full"), false);
    CHECK(follower.flight->reply()->status == 503);
    CHECK(c.join("s", 1, "req-3").role == Role::lead);
}

TEST_CASE("completed replies are bounded in bytes: the oldest go first", "[coalescer]") {
    FakeTime time;
    const auto body = std::string(1000, 'x');
    const auto one = std::string("k0").size() + reply_of(200, body)->size();
    Coalescer c(limits(60s, 2 * one), time);  // room for exactly two
    for (const auto* key : {"k0", "k1", "k2"}) {
        const auto lead = c.join(key, 1, key);
        c.finish(key, lead, reply_of(200, body), true);
        time.advance(1s);
    }
    CHECK(c.stats().completed == 2);
    CHECK(c.stats().bytes == 2 * one);
    CHECK(c.join("k0", 1, "again").role == Role::lead);  // dropped: runs again
    CHECK(c.join("k1", 1, "again").role == Role::replay);
    CHECK(c.join("k2", 1, "again").role == Role::replay);

    SECTION("a reply larger than the bound is handed over but not kept") {
        const auto lead = c.join("big", 1, "req");
        const auto follower = c.join("big", 1, "req-2");
        c.finish("big", lead, reply_of(200, std::string(3 * one, 'y')), true);
        CHECK(follower.flight->reply()->body.size() == 3 * one);
        CHECK(c.join("big", 1, "req-3").role == Role::lead);
        CHECK(c.join("k1", 1, "again").role == Role::replay);  // nothing evicted for it
    }
}
