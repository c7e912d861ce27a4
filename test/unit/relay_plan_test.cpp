// RelayPlan: the relay's decisions for one request, driven on a fake clock with no socket.
#include "proxy/relay_plan.hpp"

#include <catch2/catch.hpp>
#include <stdexcept>

#include "test/support/fakes.hpp"

using namespace llama_pool;
using namespace std::chrono_literals;

namespace {

RelayRules rules(int attempts = 3) {
    RelayRules r;
    r.max_attempts = attempts;
    r.backoff_base = 100ms;
    r.backoff_cap = 2s;
    r.second_opinion_wait = 1s;
    return r;
}

RelayDeadlines deadlines(TimePoint t0, Duration queue = 30s, Duration total = 60s,
                         bool client_set = false) {
    return {t0, t0 + queue, t0 + total, client_set};
}

AttemptReport answered(int status, bool whole = true) {
    AttemptReport r;
    r.status = status;
    r.whole_reply = whole;
    r.pool_slots = 4;
    return r;
}

AttemptReport failed(IoStatus io, bool connected = true) {
    AttemptReport r;
    r.io = io;
    r.connected = connected;
    r.pool_slots = 4;
    return r;
}

}  // namespace

TEST_CASE("a request served at once commits on its first worker", "[relay][plan]") {
    test::FakeTime time;
    test::ScriptedRandom random({0.5});
    RetryBudget budget(0.2, 3);
    {
        RelayPlan plan(rules(), deadlines(time.now()), budget, random);
        CHECK(budget.active_requests() == 1);
        CHECK(plan.state() == RelayState::queued);
        REQUIRE(plan.on_slot(SlotResult::granted) == Next::attempt);
        CHECK(plan.attempts() == 1);
        const auto d = plan.on_attempt(answered(200), time.now());
        CHECK(d.next == Next::commit);
        CHECK(d.blame == Blame::worker_ok);
        CHECK(d.outcome == AttemptOutcome::ok);
        CHECK_FALSE(d.second_opinion);
        CHECK(plan.state() == RelayState::committed);
        CHECK(plan.retry_refused() == RetryRefusal::none);
    }
    CHECK(budget.active_requests() == 0);
    CHECK(budget.active_retries() == 0);
}

TEST_CASE("a failed attempt backs off with jitter, then queues again", "[relay][plan]") {
    test::FakeTime time;
    test::ScriptedRandom random({0.5});
    RetryBudget budget(0.2, 3);
    RelayPlan plan(rules(), deadlines(time.now()), budget, random);
    REQUIRE(plan.on_slot(SlotResult::granted) == Next::attempt);

    SECTION("no connection") {
        const auto d = plan.on_attempt(failed(IoStatus::error, false), time.now());
        CHECK(d.next == Next::retry);
        CHECK(d.blame == Blame::worker_fault);
        CHECK(d.outcome == AttemptOutcome::connect_error);
        CHECK(d.retry == RetryReason::connect_error);
        // Full jitter: half of the first ceiling (100 ms) with the random draw at 0.5.
        CHECK(d.delay == 50ms);
        CHECK(plan.state() == RelayState::backing_off);
        CHECK(budget.active_retries() == 1);
        plan.on_backoff_over();
        CHECK(plan.state() == RelayState::queued);
        REQUIRE(plan.on_slot(SlotResult::granted) == Next::attempt);
        CHECK(plan.attempts() == 2);
        const auto d2 = plan.on_attempt(failed(IoStatus::timeout), time.now());
        CHECK(d2.retry == RetryReason::timeout);
        CHECK(d2.outcome == AttemptOutcome::timeout);
        CHECK(d2.delay == 100ms);             // the second ceiling is 200 ms
        CHECK(budget.active_retries() == 1);  // one retry slot per request, however many retries
    }
    SECTION("a 502, 503 or 504 from the worker") {
        const int status = GENERATE(502, 503, 504);
        const auto d = plan.on_attempt(answered(status, false), time.now());
        CHECK(d.next == Next::retry);
        CHECK(d.outcome == AttemptOutcome::status_5xx_retried);
        CHECK(d.retry == retry_reason_for_status(status));
    }
    SECTION("the backoff never runs past the total deadline") {
        time.advance(60s - 10ms);
        const auto d = plan.on_attempt(failed(IoStatus::eof), time.now());
        REQUIRE(d.next == Next::retry);
        CHECK(d.delay == 10ms);
    }
}

TEST_CASE("no retry past the attempts, the deadline or the budget", "[relay][plan]") {
    test::FakeTime time;
    test::ScriptedRandom random({0.5});

    SECTION("attempts: the last 503 is passed on and counts against the worker") {
        RetryBudget budget(0.2, 3);
        RelayPlan plan(rules(1), deadlines(time.now()), budget, random);
        REQUIRE(plan.on_slot(SlotResult::granted) == Next::attempt);
        CHECK_FALSE(plan.retries_status(503));
        const auto d = plan.on_attempt(answered(503, false), time.now());
        CHECK(d.next == Next::commit);
        CHECK(d.blame == Blame::worker_fault);
        CHECK(d.outcome == AttemptOutcome::status_5xx);
    }
    SECTION("attempts: an I/O failure on the last attempt answers 502 as 503, a timeout 504") {
        RetryBudget budget(0.2, 3);
        RelayPlan plan(rules(1), deadlines(time.now()), budget, random);
        REQUIRE(plan.on_slot(SlotResult::granted) == Next::attempt);
        const auto io = GENERATE(IoStatus::eof, IoStatus::timeout);
        const auto d = plan.on_attempt(failed(io), time.now());
        CHECK(d.next == Next::give_up);
        CHECK(plan.state() == RelayState::ended);
        CHECK(plan.retry_refused() == RetryRefusal::attempts);
        CHECK(plan.answer() == Answer::upstream_error);
        CHECK(plan.final_status() == (io == IoStatus::timeout ? 504 : 503));
    }
    SECTION("deadline") {
        RetryBudget budget(0.2, 3);
        RelayPlan plan(rules(), deadlines(time.now()), budget, random);
        REQUIRE(plan.on_slot(SlotResult::granted) == Next::attempt);
        time.advance(60s);
        CHECK(plan.on_attempt(failed(IoStatus::eof), time.now()).next == Next::give_up);
        CHECK(plan.retry_refused() == RetryRefusal::deadline);
    }
    SECTION("budget: none left once other requests hold the retries") {
        RetryBudget budget(0.0, 0);
        RelayPlan plan(rules(), deadlines(time.now()), budget, random);
        REQUIRE(plan.on_slot(SlotResult::granted) == Next::attempt);
        auto report = failed(IoStatus::eof);
        report.pool_slots = 0;
        CHECK(plan.on_attempt(report, time.now()).next == Next::give_up);
        CHECK(plan.retry_refused() == RetryRefusal::budget);
        CHECK(budget.active_retries() == 0);
    }
}

TEST_CASE("a worker's 500 gets a second opinion from another worker", "[relay][plan]") {
    test::FakeTime time;
    test::ScriptedRandom random({0.5});
    RetryBudget budget(0.2, 3);
    RelayPlan plan(rules(), deadlines(time.now()), budget, random);
    REQUIRE(plan.on_slot(SlotResult::granted) == Next::attempt);
    const auto first = plan.on_attempt(answered(500), time.now());
    REQUIRE(first.next == Next::second_opinion);
    CHECK(first.blame == Blame::deferred);
    CHECK(first.retry == RetryReason::status_500);
    CHECK(first.delay == Duration::zero());
    CHECK(plan.state() == RelayState::queued);
    CHECK(plan.awaiting_second_opinion());
    // The other worker's slot is waited for only briefly.
    CHECK(plan.slot_deadline() == time.now() + 1s);

    SECTION("served elsewhere: the first worker was at fault") {
        time.advance(300ms);
        REQUIRE(plan.on_slot(SlotResult::granted) == Next::attempt);
        const auto d = plan.on_attempt(answered(200), time.now());
        CHECK(d.next == Next::commit);
        CHECK(d.second_opinion == SecondOpinion::served_elsewhere);
        CHECK(d.earlier_worker_fault);
        CHECK(d.second_opinion_took == 300ms);
        CHECK_FALSE(plan.awaiting_second_opinion());
    }
    SECTION("a 500 there too: the request was at fault, and neither worker") {
        REQUIRE(plan.on_slot(SlotResult::granted) == Next::attempt);
        const auto d = plan.on_attempt(answered(500), time.now());
        CHECK(d.next == Next::commit);
        CHECK(d.second_opinion == SecondOpinion::failed_elsewhere);
        CHECK_FALSE(d.earlier_worker_fault);
        CHECK(d.blame == Blame::worker_ok);
    }
    SECTION("only the worker that said 500 has a slot: the client gets its 500") {
        CHECK(plan.on_slot(SlotResult::granted, true) == Next::give_up);
        CHECK(plan.answer() == Answer::first_500);
    }
    SECTION("no slot in time: the client gets the first 500") {
        CHECK(plan.on_slot(SlotResult::no_slot) == Next::give_up);
        CHECK(plan.answer() == Answer::first_500);
    }
    SECTION("the other worker fails on I/O and no attempt is left: still the first 500") {
        REQUIRE(plan.on_slot(SlotResult::granted) == Next::attempt);
        REQUIRE(plan.on_attempt(failed(IoStatus::eof), time.now()).next == Next::retry);
        plan.on_backoff_over();
        REQUIRE(plan.on_slot(SlotResult::granted) == Next::attempt);
        CHECK(plan.on_attempt(failed(IoStatus::eof), time.now()).next == Next::give_up);
        CHECK(plan.answer() == Answer::first_500);
    }
}

TEST_CASE("a 500 that is the request's own is passed on at once", "[relay][plan]") {
    test::FakeTime time;
    test::ScriptedRandom random({0.5});
    RetryBudget budget(0.2, 3);
    RelayPlan plan(rules(), deadlines(time.now()), budget, random);
    REQUIRE(plan.on_slot(SlotResult::granted) == Next::attempt);

    SECTION("its message comes from reading the request") {
        auto report = answered(500);
        report.blames_request = true;
        const auto d = plan.on_attempt(report, time.now());
        CHECK(d.next == Next::commit);
        CHECK(d.blame == Blame::worker_ok);
        CHECK(d.second_opinion == SecondOpinion::skipped);
    }
    SECTION("the request body is not JSON") {
        auto report = answered(500);
        report.request_is_json = false;
        const auto d = plan.on_attempt(report, time.now());
        CHECK(d.next == Next::commit);
        CHECK(d.blame == Blame::worker_ok);
        CHECK_FALSE(d.second_opinion);
    }
    SECTION("a streamed 500 is not read whole, so it is the worker's and passed on") {
        const auto d = plan.on_attempt(answered(500, false), time.now());
        CHECK(d.next == Next::commit);
        CHECK(d.blame == Blame::worker_fault);
        CHECK(d.outcome == AttemptOutcome::status_5xx);
    }
}

TEST_CASE("a request that gets no slot is answered by why", "[relay][plan]") {
    test::FakeTime time;
    test::ScriptedRandom random({0.5});
    RetryBudget budget(0.2, 3);

    SECTION("queue timeout") {
        RelayPlan plan(rules(), deadlines(time.now(), 30s, 60s), budget, random);
        CHECK(plan.slot_deadline() == time.now() + 30s);
        CHECK(plan.on_slot(SlotResult::no_slot) == Next::give_up);
        CHECK(plan.answer() == Answer::queue_timeout);
    }
    SECTION("the total deadline comes first") {
        RelayPlan plan(rules(), deadlines(time.now(), 90s, 60s), budget, random);
        CHECK(plan.slot_deadline() == time.now() + 60s);
        plan.on_slot(SlotResult::no_slot);
        CHECK(plan.answer() == Answer::deadline);
    }
    SECTION("the client's own deadline") {
        RelayPlan plan(rules(), deadlines(time.now(), 5s, 5s, true), budget, random);
        plan.on_slot(SlotResult::no_slot);
        CHECK(plan.answer() == Answer::deadline);
    }
    SECTION("queue full, and a client that left") {
        RelayPlan full(rules(), deadlines(time.now()), budget, random);
        full.on_slot(SlotResult::queue_full);
        CHECK(full.answer() == Answer::queue_full);
        RelayPlan left(rules(), deadlines(time.now()), budget, random);
        left.on_slot(SlotResult::cancelled);
        CHECK(left.answer() == Answer::client_gone);
    }
}

TEST_CASE("a call the state does not allow fails loudly", "[relay][plan]") {
    test::FakeTime time;
    test::ScriptedRandom random({0.5});
    RetryBudget budget(0.2, 3);
    RelayPlan plan(rules(), deadlines(time.now()), budget, random);
    CHECK_THROWS_AS(plan.on_attempt(answered(200), time.now()), std::logic_error);
    CHECK_THROWS_AS(plan.on_backoff_over(), std::logic_error);
    CHECK_THROWS_AS(plan.answer(), std::logic_error);
    REQUIRE(plan.on_slot(SlotResult::granted) == Next::attempt);
    CHECK_THROWS_AS(plan.on_slot(SlotResult::granted), std::logic_error);
    plan.on_attempt(answered(200), time.now());
    CHECK_THROWS_AS(plan.on_attempt(answered(200), time.now()), std::logic_error);
}

TEST_CASE("a client deadline refuses at once only what cannot start in time", "[relay][plan]") {
    CHECK_FALSE(cannot_start_in_time(0, 10s, 1s));  // nobody ahead
    CHECK_FALSE(cannot_start_in_time(3, 1s, 2s));
    CHECK(cannot_start_in_time(3, 3s, 2s));
}
