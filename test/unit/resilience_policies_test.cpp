#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "proxy/affinity.hpp"
#include "proxy/circuit_breaker.hpp"
#include "proxy/rate_limiter.hpp"
#include "proxy/retry_budget.hpp"
#include "proxy/service_rate.hpp"

using namespace llama_pool;
using namespace std::chrono_literals;

namespace {

// Aligned to the breaker's buckets for every window used below, so that "one bucket later"
// is an exact offset.
const TimePoint t0 = TimePoint{} + 1000s;

BreakerConfig consecutive_only(int failures) {
    BreakerConfig c;
    c.consecutive_failures = failures;
    c.ratio_min_requests = 1000000;  // the ratio never has enough outcomes
    c.base_ejection = 10s;
    c.max_ejection = 40s;
    return c;
}

BreakerConfig ratio_only(double ratio, int min_requests) {
    BreakerConfig c;
    c.consecutive_failures = 1000000;  // never reached
    c.failure_ratio = ratio;
    c.ratio_min_requests = min_requests;
    c.window = 10s;  // buckets of 1 s
    return c;
}

void record(CircuitBreaker& b, TimePoint now, int successes, int failures) {
    for (int i = 0; i < successes; ++i) {
        b.on_success(now);
    }
    for (int i = 0; i < failures; ++i) {
        b.on_failure(now);
    }
}

}  // namespace

// ---- CircuitBreaker -------------------------------------------------------------------------

TEST_CASE("breaker states have stable names", "[resilience][breaker]") {
    CHECK(to_string(BreakerState::closed) == "closed");
    CHECK(to_string(BreakerState::open) == "open");
    CHECK(to_string(BreakerState::half_open) == "half_open");
}

TEST_CASE("a closed breaker admits everything and counts failures in a row",
          "[resilience][breaker]") {
    CircuitBreaker b(consecutive_only(3));
    CHECK(b.state(t0) == BreakerState::closed);
    for (int i = 0; i < 100; ++i) {
        CHECK(b.try_acquire(t0));  // closed: no trial accounting, no limit
    }
    b.on_failure(t0);
    b.on_failure(t0);
    CHECK(b.consecutive_failures() == 2);
    CHECK(b.state(t0) == BreakerState::closed);
    b.on_success(t0);  // the run is broken: counting starts over
    CHECK(b.consecutive_failures() == 0);
    b.on_failure(t0);
    b.on_failure(t0);
    CHECK(b.state(t0) == BreakerState::closed);
    CHECK(b.ejections() == 0);
    b.on_failure(t0);
    CHECK(b.state(t0) == BreakerState::open);
    CHECK(b.ejections() == 1);
    CHECK_FALSE(b.try_acquire(t0));
}

TEST_CASE("an open breaker turns half-open exactly when its ejection ends",
          "[resilience][breaker]") {
    CircuitBreaker b(consecutive_only(1));
    b.on_failure(t0);
    REQUIRE(b.state(t0) == BreakerState::open);
    CHECK(b.reopens_at() == t0 + 10s);
    CHECK(b.state(t0 + 10s - 1ms) == BreakerState::open);
    CHECK_FALSE(b.try_acquire(t0 + 10s - 1ms));
    CHECK(b.state(t0 + 10s) == BreakerState::half_open);
}

TEST_CASE("try_acquire alone moves an expired ejection to half-open", "[resilience][breaker]") {
    CircuitBreaker b(consecutive_only(1));
    b.on_failure(t0);
    CHECK(b.try_acquire(t0 + 10s));
    CHECK(b.state(t0 + 10s) == BreakerState::half_open);
}

TEST_CASE("half-open admits exactly half_open_trials requests at once", "[resilience][breaker]") {
    for (const int trials : {1, 2, 3}) {
        auto config = consecutive_only(1);
        config.half_open_trials = trials;
        CircuitBreaker b(config);
        b.on_failure(t0);
        const auto later = t0 + 10s;
        for (int i = 0; i < trials; ++i) {
            CHECK(b.try_acquire(later));
        }
        CHECK_FALSE(b.try_acquire(later));
        CHECK_FALSE(b.try_acquire(later + 1h));  // time alone does not free a trial slot
        CHECK(b.state(later + 1h) == BreakerState::half_open);
    }
}

TEST_CASE("a half-open trial whose client left gives its slot back and decides nothing",
          "[resilience][breaker]") {
    // Regression: the relay reported nothing when a trial's client hung up, so the slot was
    // never given back and the worker stayed half-open with no trial slot: out of rotation
    // for good (an unmanaged upstream is never re-published to reset it).
    CircuitBreaker b(consecutive_only(1));
    b.on_failure(t0);
    const auto later = t0 + 10s;
    REQUIRE(b.try_acquire(later));
    REQUIRE_FALSE(b.try_acquire(later));
    b.on_abandoned(later);
    CHECK(b.state(later) == BreakerState::half_open);
    CHECK(b.try_acquire(later));
    // Only a trial slot that was taken is given back.
    b.on_abandoned(later);
    b.on_abandoned(later);
    CHECK(b.try_acquire(later));
    CHECK_FALSE(b.try_acquire(later));
    // Closed or open, an abandoned request changes nothing.
    CircuitBreaker closed(consecutive_only(2));
    closed.on_failure(t0);
    closed.on_abandoned(t0);
    closed.on_failure(t0);
    CHECK(closed.state(t0) == BreakerState::open);
    closed.on_abandoned(t0 + 1s);
    CHECK(closed.state(t0 + 1s) == BreakerState::open);
}

TEST_CASE("one success in half-open closes the breaker and clears its counters",
          "[resilience][breaker]") {
    auto config = consecutive_only(3);
    config.ratio_min_requests = 4;
    config.failure_ratio = 0.5;
    config.window = 100s;
    CircuitBreaker b(config);
    record(b, t0, 1, 3);  // three in a row, and 3/4 failed
    REQUIRE(b.state(t0) == BreakerState::open);
    const auto later = t0 + 10s;
    REQUIRE(b.try_acquire(later));
    b.on_success(later);
    CHECK(b.state(later) == BreakerState::closed);
    CHECK(b.consecutive_failures() == 0);
    CHECK(b.try_acquire(later));
    CHECK(b.try_acquire(later));
    // The window still spans the failures that opened it, but they were cleared: one more
    // failure is 1 of 1 outcomes (under ratio_min_requests) and 1 in a row.
    b.on_failure(later);
    CHECK(b.state(later) == BreakerState::closed);
    b.on_failure(later);
    CHECK(b.state(later) == BreakerState::closed);
}

TEST_CASE("a failure in half-open reopens for twice as long, up to max_ejection",
          "[resilience][breaker]") {
    CircuitBreaker b(consecutive_only(1));  // base 10 s, max 40 s
    TimePoint now = t0;
    b.on_failure(now);
    std::vector<Duration> ejections;
    for (int i = 0; i < 5; ++i) {
        ejections.push_back(b.reopens_at() - now);
        now = b.reopens_at();
        REQUIRE(b.state(now) == BreakerState::half_open);
        REQUIRE(b.try_acquire(now));
        b.on_failure(now);
        REQUIRE(b.state(now) == BreakerState::open);
    }
    CHECK(ejections == std::vector<Duration>{10s, 20s, 40s, 40s, 40s});
    CHECK(b.ejections() == 6);
}

TEST_CASE("the cap applies even when it is not a power-of-two multiple of the base",
          "[resilience][breaker]") {
    auto config = consecutive_only(1);
    config.max_ejection = 25s;
    CircuitBreaker b(config);
    b.on_failure(t0);
    CHECK(b.reopens_at() == t0 + 10s);
    b.on_failure(t0 + 10s);  // half-open now: reopens, 20 s
    CHECK(b.reopens_at() == t0 + 30s);
    b.on_failure(t0 + 30s);  // 40 s, capped at 25 s
    CHECK(b.reopens_at() == t0 + 55s);
}

TEST_CASE("the ejection length resets once the breaker has stayed closed for max_ejection",
          "[resilience][breaker]") {
    // Ejected twice (10 s, then 20 s), then closed at `closed_at`.
    const TimePoint closed_at = t0 + 30s;
    const auto ejected_twice = [&] {
        CircuitBreaker b(consecutive_only(1));  // base 10 s, max 40 s
        b.on_failure(t0);
        b.on_failure(t0 + 10s);
        REQUIRE(b.reopens_at() == closed_at);
        REQUIRE(b.try_acquire(closed_at));
        b.on_success(closed_at);
        REQUIRE(b.state(closed_at) == BreakerState::closed);
        return b;
    };

    auto recent = ejected_twice();
    const auto just_before = closed_at + 40s - 1ms;
    recent.on_failure(just_before);
    CHECK(recent.reopens_at() - just_before == 40s);  // third ejection in a row

    auto settled = ejected_twice();
    const auto at_max = closed_at + 40s;
    settled.on_failure(at_max);
    CHECK(settled.reopens_at() - at_max == 10s);  // starts over at the base
    CHECK(settled.ejections() == 3);              // the total keeps counting
}

TEST_CASE("time spent open or half-open does not count as staying closed",
          "[resilience][breaker]") {
    CircuitBreaker b(consecutive_only(1));  // base 10 s, max 40 s
    b.on_failure(t0);
    // Half-open from t0 + 10 s; the trial fails long after max_ejection has passed.
    const auto late = t0 + 1h;
    REQUIRE(b.try_acquire(late));
    b.on_failure(late);
    CHECK(b.reopens_at() - late == 20s);
}

TEST_CASE("outcomes reported while open neither extend nor end the ejection",
          "[resilience][breaker]") {
    CircuitBreaker b(consecutive_only(1));
    b.on_failure(t0);
    b.on_failure(t0 + 5s);
    CHECK(b.reopens_at() == t0 + 10s);
    CHECK(b.ejections() == 1);
    b.on_success(t0 + 6s);
    CHECK(b.state(t0 + 6s) == BreakerState::open);
    CHECK(b.state(t0 + 10s) == BreakerState::half_open);
}

TEST_CASE("a reopened breaker gets fresh trial slots when it turns half-open again",
          "[resilience][breaker]") {
    auto config = consecutive_only(1);
    config.half_open_trials = 2;
    CircuitBreaker b(config);
    b.on_failure(t0);
    REQUIRE(b.try_acquire(t0 + 10s));
    REQUIRE(b.try_acquire(t0 + 10s));
    b.on_failure(t0 + 10s);  // reopens for 20 s with a trial still out
    CHECK_FALSE(b.try_acquire(t0 + 30s - 1ms));
    CHECK(b.try_acquire(t0 + 30s));
    CHECK(b.try_acquire(t0 + 30s));
    CHECK_FALSE(b.try_acquire(t0 + 30s));
}

TEST_CASE("the failure ratio counts only once the window holds ratio_min_requests outcomes",
          "[resilience][breaker]") {
    SECTION("below the minimum, even all failures do not open it") {
        CircuitBreaker b(ratio_only(0.5, 10));
        record(b, t0, 0, 9);
        CHECK(b.state(t0) == BreakerState::closed);
        b.on_failure(t0);  // the tenth outcome
        CHECK(b.state(t0) == BreakerState::open);
    }
    SECTION("exactly the ratio opens it") {
        CircuitBreaker b(ratio_only(0.5, 10));
        record(b, t0, 5, 4);
        CHECK(b.state(t0) == BreakerState::closed);
        b.on_failure(t0);  // 5 of 10
        CHECK(b.state(t0) == BreakerState::open);
    }
    SECTION("just under the ratio does not") {
        CircuitBreaker b(ratio_only(0.5, 10));
        record(b, t0, 6, 4);  // 4 of 10
        CHECK(b.state(t0) == BreakerState::closed);
        b.on_success(t0);
        b.on_failure(t0);  // 5 of 12
        CHECK(b.state(t0) == BreakerState::closed);
    }
    SECTION("a ratio that is not exact in binary: 3 of 10 reaches 0.3") {
        CircuitBreaker b(ratio_only(0.3, 10));
        record(b, t0, 7, 2);
        CHECK(b.state(t0) == BreakerState::closed);
        b.on_failure(t0);
        CHECK(b.state(t0) == BreakerState::open);
    }
    SECTION("successes alone never open it") {
        CircuitBreaker b(ratio_only(0.0, 1));
        record(b, t0, 50, 0);
        CHECK(b.state(t0) == BreakerState::closed);
    }
}

TEST_CASE("interleaved failures open the breaker by ratio, not by run length",
          "[resilience][breaker]") {
    auto config = ratio_only(0.5, 10);
    config.consecutive_failures = 3;
    CircuitBreaker b(config);
    for (int i = 0; i < 4; ++i) {
        b.on_failure(t0);
        b.on_failure(t0);
        b.on_success(t0);
    }
    // 8 failures, 4 successes, never three in a row: the ratio decided, at the tenth outcome
    // (7 of 10 failed).
    CHECK(b.state(t0) == BreakerState::open);
    CHECK(b.ejections() == 1);
}

TEST_CASE("outcomes older than the window no longer count toward the ratio",
          "[resilience][breaker]") {
    // Window 10 s in ten 1 s buckets; t0 is on a bucket boundary. Nine failures at t0.
    SECTION("inside the window they count") {
        CircuitBreaker b(ratio_only(0.5, 10));
        record(b, t0, 0, 9);
        b.on_failure(t0 + 10s - 1ms);
        CHECK(b.state(t0 + 10s - 1ms) == BreakerState::open);
    }
    SECTION("a window later they do not") {
        CircuitBreaker b(ratio_only(0.5, 10));
        record(b, t0, 0, 9);
        b.on_failure(t0 + 10s);
        CHECK(b.state(t0 + 10s) == BreakerState::closed);
        // The new window fills up on its own.
        record(b, t0 + 10s, 0, 8);
        CHECK(b.state(t0 + 10s) == BreakerState::closed);
        b.on_failure(t0 + 15s);
        CHECK(b.state(t0 + 15s) == BreakerState::open);
    }
    SECTION("a bucket slot reused a window later starts empty") {
        CircuitBreaker b(ratio_only(0.5, 10));
        record(b, t0, 0, 9);        // bucket slot 0
        record(b, t0 + 20s, 9, 0);  // same slot, two windows later: the failures are gone
        b.on_failure(t0 + 20s);     // 1 of 10
        CHECK(b.state(t0 + 20s) == BreakerState::closed);
    }
}

// ---- RetryBudget ----------------------------------------------------------------------------

TEST_CASE("the retry budget always allows min_concurrent retries", "[resilience][budget]") {
    RetryBudget budget(0.2, 2);
    CHECK(budget.try_start_retry());
    CHECK(budget.try_start_retry());
    CHECK_FALSE(budget.try_start_retry());
    CHECK(budget.active_retries() == 2);
    budget.retry_finished();
    CHECK(budget.active_retries() == 1);
    CHECK(budget.try_start_retry());
    CHECK_FALSE(budget.try_start_retry());
}

TEST_CASE("the retry budget grows with the requests in flight, rounding down",
          "[resilience][budget]") {
    RetryBudget budget(0.2, 2);
    for (int i = 0; i < 19; ++i) {
        budget.request_started();
    }
    CHECK(budget.active_requests() == 19);
    // floor(0.2 * 19) = 3.
    CHECK(budget.try_start_retry());
    CHECK(budget.try_start_retry());
    CHECK(budget.try_start_retry());
    CHECK_FALSE(budget.try_start_retry());
    budget.request_started();  // 20 in flight: floor(0.2 * 20) = 4
    CHECK(budget.try_start_retry());
    CHECK_FALSE(budget.try_start_retry());
    CHECK(budget.active_retries() == 4);
    // Requests finishing shrink the budget; retries already running are not taken back, but
    // no new one starts until they are under it again.
    for (int i = 0; i < 10; ++i) {
        budget.request_finished();
    }
    CHECK(budget.active_requests() == 10);
    budget.retry_finished();
    budget.retry_finished();  // 2 running, budget max(2, floor(2.0)) = 2
    CHECK_FALSE(budget.try_start_retry());
    budget.retry_finished();
    CHECK(budget.try_start_retry());
}

TEST_CASE("the retry budget's counters never go negative", "[resilience][budget]") {
    RetryBudget budget(0.5, 0);
    budget.request_finished();
    budget.retry_finished();
    CHECK(budget.active_requests() == 0);
    CHECK(budget.active_retries() == 0);
    CHECK_FALSE(budget.try_start_retry());  // no floor, no requests: no retries
    budget.request_started();
    budget.request_started();
    CHECK(budget.try_start_retry());
    CHECK_FALSE(budget.try_start_retry());
}

TEST_CASE("the retry budget is consistent under concurrent use", "[resilience][budget]") {
    RetryBudget budget(0.1, 3);
    std::atomic<int> running{0};
    std::atomic<int> most{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&] {
            for (int i = 0; i < 2000; ++i) {
                if (budget.try_start_retry()) {
                    const int now_running = ++running;
                    int seen = most.load();
                    while (now_running > seen && !most.compare_exchange_weak(seen, now_running)) {
                    }
                    --running;
                    budget.retry_finished();
                }
            }
        });
    }
    for (auto& t : threads) {
        t.join();
    }
    CHECK(most.load() <= 3);
    CHECK(budget.active_retries() == 0);
}

// ---- TokenBucket / KeyedRateLimiter ----------------------------------------------------------

TEST_CASE("a token bucket starts full and refuses the request after the burst",
          "[resilience][rate]") {
    TokenBucket bucket(2, 3, t0);  // 2 per second, burst 3
    CHECK(bucket.tokens(t0) == Approx(3));
    CHECK(bucket.wait_for(t0) == Duration::zero());
    CHECK(bucket.try_take(t0));
    CHECK(bucket.try_take(t0));
    CHECK(bucket.try_take(t0));
    CHECK_FALSE(bucket.try_take(t0));
    CHECK(bucket.wait_for(t0) == 500ms);
    CHECK_FALSE(bucket.try_take(t0 + 499ms));
    CHECK(bucket.wait_for(t0 + 499ms) == 1ms);
    CHECK(bucket.try_take(t0 + 500ms));
    CHECK_FALSE(bucket.try_take(t0 + 500ms));
}

TEST_CASE("a client that waits as told finds its token, even when 1/rate is not exact",
          "[resilience][rate]") {
    TokenBucket bucket(3, 1, t0);  // 1/3 s has no exact nanosecond count
    REQUIRE(bucket.try_take(t0));
    const auto wait = bucket.wait_for(t0);
    CHECK(wait >= 333333333ns);
    CHECK(wait <= 333333334ns);
    CHECK_FALSE(bucket.try_take(t0 + wait - 1ms));
    CHECK(bucket.try_take(t0 + wait));
}

TEST_CASE("a token bucket refills continuously and never beyond its burst", "[resilience][rate]") {
    TokenBucket bucket(10, 5, t0);
    REQUIRE(bucket.try_take(t0, 5));
    CHECK(bucket.tokens(t0) == Approx(0).margin(1e-9));
    CHECK(bucket.tokens(t0 + 250ms) == Approx(2.5));
    CHECK(bucket.tokens(t0 + 1h) == Approx(5));
    CHECK_FALSE(bucket.try_take(t0 + 1h, 6));
    CHECK(bucket.try_take(t0 + 1h, 5));
}

TEST_CASE("a token bucket reports waits for several tokens, and never for more than it holds",
          "[resilience][rate]") {
    TokenBucket bucket(4, 2, t0);
    CHECK(bucket.wait_for(t0, 2) == Duration::zero());
    REQUIRE(bucket.try_take(t0, 2));
    CHECK(bucket.wait_for(t0, 2) == 500ms);
    CHECK(bucket.wait_for(t0, 3) == Duration::max());
    TokenBucket stuck(0, 1, t0);
    REQUIRE(stuck.try_take(t0));
    CHECK(stuck.wait_for(t0 + 1h) == Duration::max());
}

TEST_CASE("a clock read out of order does not credit tokens twice", "[resilience][rate]") {
    TokenBucket bucket(1, 1, t0);
    REQUIRE(bucket.try_take(t0 + 10s));
    CHECK_FALSE(bucket.try_take(t0 + 5s));  // earlier than the last refill: no credit
    CHECK_FALSE(bucket.try_take(t0 + 10s + 999ms));
    CHECK(bucket.try_take(t0 + 11s));
}

TEST_CASE("the keyed limiter keeps one bucket per key", "[resilience][rate]") {
    KeyedRateLimiter limiter(1, 2);
    CHECK(limiter.check("a", t0).allowed);
    CHECK(limiter.check("a", t0).allowed);
    const auto refused = limiter.check("a", t0);
    CHECK_FALSE(refused.allowed);
    CHECK(refused.retry_after == 1s);
    CHECK(limiter.check("b", t0).allowed);  // another client is not affected
    CHECK(limiter.tracked_keys() == 2);
    const auto later = limiter.check("a", t0 + 400ms);
    CHECK_FALSE(later.allowed);
    CHECK(later.retry_after == 600ms);
    CHECK(limiter.check("a", t0 + 1s).allowed);
    const auto again = limiter.check("a", t0 + 1s);
    CHECK_FALSE(again.allowed);
    CHECK(again.retry_after == 1s);
}

TEST_CASE("the keyed limiter forgets the least recently used key", "[resilience][rate]") {
    // One token per 1000 s: a refused key stays refused for the whole test unless forgotten.
    const double slow = 0.001;
    SECTION("a recently used key survives") {
        KeyedRateLimiter limiter(slow, 1, 2);
        CHECK(limiter.check("a", t0).allowed);
        CHECK(limiter.check("b", t0).allowed);
        CHECK_FALSE(limiter.check("a", t0 + 1s).allowed);  // a is now the most recent
        CHECK(limiter.check("c", t0 + 2s).allowed);        // forgets b
        CHECK(limiter.tracked_keys() == 2);
        CHECK_FALSE(limiter.check("a", t0 + 3s).allowed);  // remembered: still empty
        CHECK(limiter.check("b", t0 + 4s).allowed);        // forgotten: a full bucket
    }
    SECTION("without that use, the oldest key goes") {
        KeyedRateLimiter limiter(slow, 1, 2);
        CHECK(limiter.check("a", t0).allowed);
        CHECK(limiter.check("b", t0).allowed);
        CHECK(limiter.check("c", t0 + 2s).allowed);  // forgets a
        CHECK(limiter.tracked_keys() == 2);
        CHECK(limiter.check("a", t0 + 3s).allowed);
        CHECK_FALSE(limiter.check("c", t0 + 4s).allowed);  // c was kept
    }
    SECTION("a refused request is a use too") {
        KeyedRateLimiter limiter(slow, 1, 3);
        for (const char* key : {"a", "b", "c"}) {
            CHECK(limiter.check(key, t0).allowed);
        }
        CHECK_FALSE(limiter.check("a", t0).allowed);
        CHECK(limiter.check("d", t0).allowed);  // forgets b, the oldest
        CHECK_FALSE(limiter.check("a", t0).allowed);
        CHECK_FALSE(limiter.check("c", t0).allowed);
        CHECK_FALSE(limiter.check("d", t0).allowed);
        CHECK(limiter.tracked_keys() == 3);
    }
}

TEST_CASE("the keyed limiter stays bounded under many keys", "[resilience][rate]") {
    KeyedRateLimiter limiter(1, 1, 100);
    for (int i = 0; i < 1000; ++i) {
        CHECK(limiter.check("client-" + std::to_string(i), t0).allowed);
    }
    CHECK(limiter.tracked_keys() == 100);
    CHECK_FALSE(limiter.check("client-999", t0).allowed);
    CHECK(limiter.check("client-0", t0).allowed);
}

// ---- ServiceRate ----------------------------------------------------------------------------

TEST_CASE("with no completion yet, one second per request", "[resilience][service_rate]") {
    const ServiceRate rate;
    CHECK(rate.rate(t0) == 0);
    CHECK(rate.retry_after_seconds(0, t0) == 1);
    CHECK(rate.retry_after_seconds(4, t0) == 5);
    CHECK(rate.retry_after_seconds(59, t0) == 60);
    CHECK(rate.retry_after_seconds(60, t0) == 60);
    CHECK(rate.retry_after_seconds(1000, t0, 10) == 10);
    CHECK(rate.expected_wait(0, t0) == Duration::zero());
    CHECK(rate.expected_wait(3, t0) == 3s);
}

TEST_CASE("the service rate follows a steady completion rate", "[resilience][service_rate]") {
    ServiceRate rate(30s);
    TimePoint now = t0;
    SECTION("after a few seconds") {
        for (int i = 0; i < 100; ++i) {  // 10 per second for 10 s
            rate.on_completion(now);
            now += 100ms;
        }
    }
    SECTION("after many half-lives") {
        for (int i = 0; i < 6000; ++i) {  // 10 per second for 10 minutes
            rate.on_completion(now);
            now += 100ms;
        }
    }
    now -= 100ms;
    CHECK(rate.rate(now) == Approx(10).epsilon(0.03));
    CHECK(rate.retry_after_seconds(0, now) == 1);   // 0.1 s, rounded up to the minimum
    CHECK(rate.retry_after_seconds(24, now) == 3);  // 2.5 s, rounded up
    CHECK(rate.retry_after_seconds(5000, now) == 60);
    CHECK(rate.retry_after_seconds(5000, now, 30) == 30);
    CHECK(to_seconds(rate.expected_wait(9, now)) == Approx(1).epsilon(0.03));
}

TEST_CASE("the service rate halves every half-life without completions",
          "[resilience][service_rate]") {
    ServiceRate rate(10s);
    TimePoint now = t0;
    for (int i = 0; i < 3000; ++i) {  // 5 per second for 10 minutes
        rate.on_completion(now);
        now += 200ms;
    }
    const auto last = now - 200ms;
    const double r = rate.rate(last);
    CHECK(r == Approx(5).epsilon(0.03));
    CHECK(rate.rate(last + 10s) == Approx(r / 2).epsilon(0.001));
    CHECK(rate.rate(last + 20s) == Approx(r / 4).epsilon(0.001));
    // rate() is a read: asking about the future does not move the measurement.
    CHECK(rate.rate(last) == r);
    // A slower rate means a longer Retry-After: 10 requests at ~1.25 per second.
    CHECK(rate.retry_after_seconds(9, last + 20s) == 8);
}

TEST_CASE("the first completion reads as one per second", "[resilience][service_rate]") {
    // So Retry-After does not jump from the no-measurement estimate to tens of seconds.
    ServiceRate rate(30s);
    rate.on_completion(t0);
    CHECK(rate.rate(t0) == Approx(1).epsilon(0.02));
    CHECK(rate.retry_after_seconds(0, t0) == 1);
    CHECK(rate.retry_after_seconds(4, t0) == 5);
    CHECK(to_seconds(rate.expected_wait(0, t0)) == Approx(1).epsilon(0.02));
}

TEST_CASE("a rate decayed to nothing gives the longest Retry-After, not an overflow",
          "[resilience][service_rate]") {
    ServiceRate rate(1s);
    rate.on_completion(t0);
    const auto much_later = t0 + std::chrono::hours(24 * 30);
    CHECK(rate.rate(much_later) == Approx(0).margin(1e-12));
    CHECK(rate.retry_after_seconds(0, much_later) == 60);
    CHECK(rate.retry_after_seconds(0, much_later, 120) == 120);
    const auto wait = rate.expected_wait(0, much_later);
    CHECK(wait >= std::chrono::hours(24));
    CHECK(much_later + wait > much_later);  // adding it to a time point does not overflow
}

TEST_CASE("completions reported out of order still count", "[resilience][service_rate]") {
    ServiceRate in_order(30s);
    ServiceRate shuffled(30s);
    for (int i = 0; i < 100; ++i) {
        in_order.on_completion(t0 + i * 100ms);
    }
    for (int i = 0; i < 100; i += 2) {
        shuffled.on_completion(t0 + (i + 1) * 100ms);
        shuffled.on_completion(t0 + i * 100ms);  // the earlier one arrives second
    }
    const auto now = t0 + 10s;
    CHECK(shuffled.rate(now) == Approx(in_order.rate(now)).epsilon(0.01));
}

// ---- Prefix affinity ------------------------------------------------------------------------

TEST_CASE("the nesting guard counts brackets outside strings, without allocating",
          "[resilience][affinity]") {
    CHECK(json_nesting_at_most("", 0));
    CHECK(json_nesting_at_most(R"({"prompt":"x"})", 1));
    CHECK_FALSE(json_nesting_at_most(R"({"prompt":"x"})", 0));
    CHECK(json_nesting_at_most(R"({"messages":[{"content":"[[[[{{{{"}]})", 3));
    CHECK_FALSE(json_nesting_at_most(R"({"messages":[{"content":"x"}]})", 2));
    CHECK(json_nesting_at_most(R"({"a":"\"[[[["})", 1));  // an escaped quote stays in the string
    CHECK(json_nesting_at_most("]]]]}}}}[", 1));          // not JSON, still no crash
    // 100,000 nested arrays: refused at the limit, whatever follows.
    const std::string deep = std::string(100000, '[') + std::string(100000, ']');
    CHECK_FALSE(json_nesting_at_most(deep, 256));
    CHECK(json_nesting_at_most(deep, 100000));
}

TEST_CASE("prompt_text finds the prompt a request's cache starts with", "[resilience][affinity]") {
    using nlohmann::json;
    CHECK(prompt_text(json{{"prompt", "Once upon a time"}}) == "Once upon a time");
    CHECK(prompt_text(json{{"prompt", json::array({"first", "second"})}}) == "first");
    CHECK(prompt_text(json{{"prompt", json::array({1, 2, 3})}}).empty());  // token ids
    CHECK(prompt_text(json{{"prompt", json::array()}}).empty());
    CHECK(prompt_text(json{{"max_tokens", 5}}).empty());
    CHECK(prompt_text(json::array({"x"})).empty());
    CHECK(prompt_text(json()).empty());
    CHECK(prompt_text(json{{"prompt", "p"}, {"messages", json::array()}}) == "p");
}

TEST_CASE("prompt_text renders chat messages in order, role and content",
          "[resilience][affinity]") {
    using nlohmann::json;
    const json short_chat = {{"messages",
                              {{{"role", "system"}, {"content", "You are terse."}},
                               {{"role", "user"}, {"content", "Hi"}}}}};
    const auto text = prompt_text(short_chat);
    CHECK(text.find("system") < text.find("You are terse."));
    CHECK(text.find("You are terse.") < text.find("user"));
    CHECK(text.find("user") < text.find("Hi"));

    // A longer conversation that starts the same way shares the whole shorter rendering.
    json longer = short_chat;
    longer["messages"].push_back({{"role", "assistant"}, {"content", "Hello."}});
    longer["messages"].push_back({{"role", "user"}, {"content", "More"}});
    CHECK(prompt_text(longer).rfind(text, 0) == 0);

    // Content as an array of parts: the text parts, in order; other parts are skipped.
    const json parts = {{"messages",
                         {{{"role", "user"},
                           {"content",
                            {{{"type", "text"}, {"text", "Describe "}},
                             {{"type", "image_url"}, {"image_url", {{"url", "data:..."}}}},
                             {{"type", "text"}, {"text", "this"}}}}}}}};
    const auto parts_text = prompt_text(parts);
    CHECK(parts_text.find("Describe this") != std::string::npos);
    CHECK(parts_text.find("data:") == std::string::npos);

    // Different roles with the same content are different prompts.
    const json as_user = {{"messages", {{{"role", "user"}, {"content", "x"}}}}};
    const json as_system = {{"messages", {{{"role", "system"}, {"content", "x"}}}}};
    CHECK(prompt_text(as_user) != prompt_text(as_system));

    // Odd shapes do not throw: null content, non-object messages, messages not an array.
    const json odd = {{"messages", {nullptr, {{"role", "assistant"}, {"content", nullptr}}}}};
    CHECK(prompt_text(odd).find("assistant") != std::string::npos);
    CHECK(prompt_text(json{{"messages", "hello"}}).empty());
}

TEST_CASE("affinity keys are FNV-1a over the prefix", "[resilience][affinity]") {
    // Reference values of 64-bit FNV-1a.
    CHECK(affinity_key("a", 100) == 0xaf63dc4c8601ec8cULL);
    CHECK(affinity_key("foobar", 100) == 0x85944171f73967e8ULL);
    CHECK(affinity_key("", 100) == 0);
    CHECK(affinity_key("anything", 0) == 0);
    CHECK(affinity_key("foobarbaz", 6) == affinity_key("foobar", 6));
    CHECK(affinity_key("foobarbaz", 7) != affinity_key("foobarqux", 7));
    CHECK(affinity_key("foobarbaz", 6) == affinity_key("foobarqux", 6));
    CHECK(affinity_key("foobar", 1000) == affinity_key("foobar", 6));
}

TEST_CASE("rendezvous order is a deterministic permutation", "[resilience][affinity]") {
    const std::vector<std::string> ids{"w0", "w1", "w2", "w3"};
    CHECK(rendezvous_order(42, {}).empty());
    CHECK(rendezvous_order(42, {"only"}) == std::vector<std::size_t>{0});
    for (std::uint64_t key : {0ULL, 1ULL, 42ULL, 0xffffffffffffffffULL}) {
        const auto order = rendezvous_order(key, ids);
        CHECK(order == rendezvous_order(key, ids));
        auto sorted = order;
        std::sort(sorted.begin(), sorted.end());
        CHECK(sorted == std::vector<std::size_t>{0, 1, 2, 3});
    }
    // The ranking belongs to the ids, not to their positions in the list.
    const std::vector<std::string> reversed{"w3", "w2", "w1", "w0"};
    for (std::uint64_t key = 0; key < 50; ++key) {
        const auto a = rendezvous_order(key, ids);
        const auto b = rendezvous_order(key, reversed);
        for (std::size_t i = 0; i < ids.size(); ++i) {
            CHECK(ids[a[i]] == reversed[b[i]]);
        }
    }
    // Duplicate ids tie; the earlier one ranks first.
    const auto dup = rendezvous_order(7, {"same", "same"});
    CHECK(dup == std::vector<std::size_t>{0, 1});
}

TEST_CASE("removing or adding a worker moves only the keys it ranks first",
          "[resilience][affinity]") {
    const std::vector<std::string> four{"worker-0", "worker-1", "worker-2", "worker-3"};
    const std::vector<std::string> three{"worker-0", "worker-1", "worker-3"};
    const std::vector<std::string> five{"worker-0", "worker-1", "worker-2", "worker-3", "worker-4"};
    int moved_by_removal = 0;
    int moved_by_addition = 0;
    for (int i = 0; i < 1000; ++i) {
        const auto key = affinity_key("prompt number " + std::to_string(i), 256);
        const auto before = four[rendezvous_order(key, four).front()];
        const auto order = rendezvous_order(key, four);
        const auto after_removal = three[rendezvous_order(key, three).front()];
        if (before == "worker-2") {
            // Its keys go to whichever worker ranked second.
            CHECK(after_removal == four[order[1]]);
            ++moved_by_removal;
        } else {
            CHECK(after_removal == before);
        }
        const auto after_addition = five[rendezvous_order(key, five).front()];
        if (after_addition != before) {
            CHECK(after_addition == "worker-4");
            ++moved_by_addition;
        }
    }
    // About a quarter leave with worker-2, about a fifth go to worker-4.
    CHECK(moved_by_removal > 150);
    CHECK(moved_by_removal < 350);
    CHECK(moved_by_addition > 120);
    CHECK(moved_by_addition < 280);
}

TEST_CASE("rendezvous spreads keys roughly evenly", "[resilience][affinity]") {
    const std::vector<std::string> ids{"127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083",
                                       "127.0.0.1:8084"};
    SECTION("hashed prompts") {
        std::map<std::size_t, int> counts;
        for (int i = 0; i < 1000; ++i) {
            ++counts[rendezvous_order(affinity_key("user " + std::to_string(i), 256), ids)[0]];
        }
        for (std::size_t w = 0; w < ids.size(); ++w) {
            CHECK(counts[w] >= 150);
            CHECK(counts[w] <= 350);
        }
    }
    SECTION("sequential keys") {
        std::map<std::size_t, int> counts;
        for (std::uint64_t key = 1; key <= 1000; ++key) {
            ++counts[rendezvous_order(key, ids)[0]];
        }
        for (std::size_t w = 0; w < ids.size(); ++w) {
            CHECK(counts[w] >= 150);
            CHECK(counts[w] <= 350);
        }
    }
}
