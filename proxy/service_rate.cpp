#include "proxy/service_rate.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>

namespace llama_pool {

namespace {

// Far beyond any deadline, yet `now + wait` cannot overflow the clock.
constexpr Duration kLongestWait = std::chrono::hours(24 * 365);

// Doubles can land a hair above an exact quotient (1 / 0.9999999999 for a rate of 1/s);
// without the slack that rounds Retry-After up by a whole second.
constexpr double kCeilSlack = 1e-9;

double half_life_seconds(Duration half_life) {
    return std::max(to_seconds(half_life), 1e-3);
}

}  // namespace

// Each completion adds ln2 / half_life to the rate, and the rate halves every half_life. The
// contributions of completions at a steady r per second sum to r * (1 - 2^(-t / half_life))
// after t seconds, which tends to r: a weighted count of recent completions, in per-second
// units.
void ServiceRate::on_completion(TimePoint now) {
    std::lock_guard lock(mutex_);
    const double h = half_life_seconds(half_life_);
    const double impulse = std::log(2.0) / h;
    if (!started_) {
        started_ = true;
        first_ = now;
        last_ = now;
        rate_ = impulse;
        return;
    }
    // Completions reported out of order (the clock read before the lock) count at `last_`,
    // and the earliest one starts the history.
    first_ = std::min(first_, now);
    if (now > last_) {
        rate_ *= std::exp2(-to_seconds(now - last_) / h);
        last_ = now;
    }
    rate_ += impulse;
}

double ServiceRate::rate(TimePoint now) const {
    std::lock_guard lock(mutex_);
    return rate_locked(now);
}

double ServiceRate::rate_locked(TimePoint now) const {
    if (!started_) {
        return 0;
    }
    const double h = half_life_seconds(half_life_);
    const double decayed = rate_ * std::exp2(-std::max(0.0, to_seconds(now - last_)) / h);
    // Young measurements are scaled up by the share of the weight they have had time to
    // collect (1 - 2^(-t / half_life)); otherwise the first half-lives would report a
    // fraction of the true rate and Retry-After would jump from 1 s to tens of seconds at the
    // first completion. At least one second of history: a single completion then reads as
    // one per second, the same as the estimate without any measurement.
    const double age = std::max(1.0, to_seconds(now - first_));
    return decayed / (1.0 - std::exp2(-age / h));
}

int ServiceRate::retry_after_seconds(std::size_t queue_depth, TimePoint now,
                                     int max_seconds) const {
    std::lock_guard lock(mutex_);
    const double requests = static_cast<double>(queue_depth) + 1;
    double seconds = 0;
    if (!started_) {
        seconds = requests;
    } else {
        const double r = rate_locked(now);
        seconds = r > 0 ? std::ceil(requests / r - kCeilSlack) : static_cast<double>(max_seconds);
    }
    // Clamped in doubles: a rate decayed to nearly nothing gives more seconds than an int holds.
    seconds = std::min(seconds, static_cast<double>(max_seconds));
    return std::max(1, static_cast<int>(seconds));
}

Duration ServiceRate::expected_wait(std::size_t queue_depth, TimePoint now) const {
    std::lock_guard lock(mutex_);
    double seconds = 0;
    if (!started_) {
        // One second for each request ahead; nothing ahead, nothing to wait for.
        seconds = static_cast<double>(queue_depth);
    } else {
        const double r = rate_locked(now);
        if (r <= 0) {
            return kLongestWait;
        }
        // A queued request is served after the completion that frees a slot for each request
        // ahead of it, and then the one that frees its own.
        seconds = (static_cast<double>(queue_depth) + 1) / r;
    }
    if (seconds >= to_seconds(kLongestWait)) {
        return kLongestWait;
    }
    return std::chrono::duration_cast<Duration>(std::chrono::duration<double>(seconds));
}

}  // namespace llama_pool
