#include "proxy/rate_limiter.hpp"

#include <algorithm>
#include <chrono>

namespace llama_pool {

namespace {

// Refill works in doubles, so n tokens can come out a hair short of n after exactly the
// time wait_for promised; without the slack a client that waits as told is refused again.
constexpr double kSlack = 1e-9;

}  // namespace

void TokenBucket::refill(TimePoint now) {
    // A clock read before another thread's later one may arrive second: no refill, and
    // `last_` does not move back (that would credit the same time twice).
    if (now <= last_) {
        return;
    }
    tokens_ = std::min(burst_, tokens_ + rate_ * to_seconds(now - last_));
    last_ = now;
}

bool TokenBucket::try_take(TimePoint now, double n) {
    refill(now);
    if (tokens_ + kSlack < n) {
        return false;
    }
    tokens_ = std::max(0.0, tokens_ - n);
    return true;
}

Duration TokenBucket::wait_for(TimePoint now, double n) {
    refill(now);
    const double missing = n - tokens_;
    if (missing <= kSlack) {
        return Duration::zero();
    }
    // Never, if the bucket cannot hold n or does not refill.
    if (n > burst_ + kSlack || rate_ <= 0) {
        return Duration::max();
    }
    // Aimed at half the slack short of `missing`: far above the rounding noise of refill, so
    // the tokens are there after exactly this wait, while noise in `missing` itself cannot
    // turn an exact 500 ms into 500 ms and 1 ns.
    const std::chrono::duration<double> wait((missing - kSlack / 2) / rate_);
    // Half the maximum: rounding at the very top of the range could overflow the cast.
    if (wait >= std::chrono::duration<double>(Duration::max()) / 2) {
        return Duration::max();
    }
    // Rounded up: a client that waits exactly this long must find the tokens there.
    return std::chrono::ceil<Duration>(wait);
}

double TokenBucket::tokens(TimePoint now) {
    refill(now);
    return tokens_;
}

KeyedRateLimiter::Decision KeyedRateLimiter::check(const std::string& key, TimePoint now) {
    std::lock_guard lock(mutex_);
    auto it = entries_.find(key);
    if (it != entries_.end()) {
        lru_.splice(lru_.begin(), lru_, it->second.lru);
    } else {
        // At least one key is kept: with none, every request would start with a full bucket
        // and nothing would ever be limited.
        const std::size_t limit = std::max<std::size_t>(max_keys_, 1);
        while (entries_.size() >= limit) {
            entries_.erase(lru_.back());
            lru_.pop_back();
        }
        lru_.push_front(key);
        it = entries_.emplace(key, Entry{TokenBucket(rate_, burst_, now), lru_.begin()}).first;
    }
    auto& bucket = it->second.bucket;
    Decision d;
    if (!bucket.try_take(now)) {
        d.allowed = false;
        d.retry_after = bucket.wait_for(now, 1);
    }
    return d;
}

std::size_t KeyedRateLimiter::tracked_keys() const {
    std::lock_guard lock(mutex_);
    return entries_.size();
}

}  // namespace llama_pool
