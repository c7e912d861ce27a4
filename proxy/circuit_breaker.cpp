#include "proxy/circuit_breaker.hpp"

#include <algorithm>

namespace llama_pool {

std::string_view to_string(BreakerState state) {
    switch (state) {
        case BreakerState::closed:
            return "closed";
        case BreakerState::open:
            return "open";
        case BreakerState::half_open:
            return "half_open";
    }
    return "unknown";
}

namespace {

// Bucket numbers are counted from the clock's epoch so that a bucket can tell whether it
// belongs to the current window without a sweep. Floor division: a fake clock may start
// before the epoch.
std::int64_t epoch_of(TimePoint now, Duration width) {
    const auto t = now.time_since_epoch().count();
    const auto w = width.count();
    auto q = t / w;
    if (t % w != 0 && t < 0) {
        --q;
    }
    return static_cast<std::int64_t>(q);
}

}  // namespace

BreakerState CircuitBreaker::state(TimePoint now) {
    if (state_ == BreakerState::open && now >= open_until_) {
        state_ = BreakerState::half_open;
        trials_in_flight_ = 0;
    }
    return state_;
}

bool CircuitBreaker::try_acquire(TimePoint now) {
    switch (state(now)) {
        case BreakerState::closed:
            return true;
        case BreakerState::open:
            return false;
        case BreakerState::half_open:
            if (trials_in_flight_ >= config_.half_open_trials) {
                return false;
            }
            ++trials_in_flight_;
            return true;
    }
    return false;
}

void CircuitBreaker::on_success(TimePoint now) {
    switch (state(now)) {
        case BreakerState::closed:
            consecutive_ = 0;
            count(now, true);
            return;
        case BreakerState::open:
            // A request admitted before the ejection (or as a last resort while every worker
            // is ejected): the ejection runs its course regardless.
            return;
        case BreakerState::half_open:
            state_ = BreakerState::closed;
            closed_since_ = now;
            consecutive_ = 0;
            trials_in_flight_ = 0;
            buckets_ = {};  // the failures that opened the breaker must not reopen it
            return;
    }
}

void CircuitBreaker::on_failure(TimePoint now) {
    switch (state(now)) {
        case BreakerState::closed: {
            ++consecutive_;
            count(now, false);
            const bool too_many_in_a_row =
                config_.consecutive_failures > 0 && consecutive_ >= config_.consecutive_failures;
            if (too_many_in_a_row || ratio_exceeded(now)) {
                open(now);
            }
            return;
        }
        case BreakerState::open:
            // Already ejected; a late failure must not stretch the ejection.
            return;
        case BreakerState::half_open:
            ++consecutive_;
            open(now);
            return;
    }
}

void CircuitBreaker::on_abandoned(TimePoint now) {
    if (state(now) == BreakerState::half_open && trials_in_flight_ > 0) {
        --trials_in_flight_;
    }
}

CircuitBreaker::Bucket& CircuitBreaker::bucket(TimePoint now) {
    const auto epoch = epoch_of(now, std::max(config_.window / kBuckets, Duration{1}));
    auto& b = buckets_[static_cast<std::size_t>(((epoch % kBuckets) + kBuckets) % kBuckets)];
    if (b.epoch != epoch) {
        b = Bucket{epoch, 0, 0};
    }
    return b;
}

void CircuitBreaker::count(TimePoint now, bool success) {
    auto& b = bucket(now);
    ++(success ? b.successes : b.failures);
}

bool CircuitBreaker::ratio_exceeded(TimePoint now) {
    const auto current = epoch_of(now, std::max(config_.window / kBuckets, Duration{1}));
    int successes = 0;
    int failures = 0;
    for (const auto& b : buckets_) {
        // Buckets from an earlier window (or, with a clock that went back, a later one)
        // have not been reused yet but no longer count.
        if (b.epoch > current - kBuckets && b.epoch <= current) {
            successes += b.successes;
            failures += b.failures;
        }
    }
    const int total = successes + failures;
    if (total == 0 || total < config_.ratio_min_requests) {
        return false;
    }
    // A division rather than failures >= ratio * total: 3 / 10.0 is the same double as 0.3,
    // while 0.3 * 10 is not 3.
    return static_cast<double>(failures) / total >= config_.failure_ratio;
}

void CircuitBreaker::open(TimePoint now) {
    if (state_ == BreakerState::closed && now - closed_since_ >= config_.max_ejection) {
        reejections_ = 0;
    }
    // Doubling stops at the cap, so a worker ejected many times cannot overflow the duration.
    Duration ejection = config_.base_ejection;
    for (int i = 0; i < reejections_ && ejection < config_.max_ejection; ++i) {
        ejection *= 2;
    }
    ejection = std::min(ejection, config_.max_ejection);
    ++reejections_;
    ++ejections_total_;
    state_ = BreakerState::open;
    open_until_ = now + ejection;
}

}  // namespace llama_pool
