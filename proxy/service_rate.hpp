#pragma once

#include <cstddef>
#include <mutex>

#include "common/clock.hpp"

namespace llama_pool {

// Measures how fast the pool completes requests (an exponentially weighted rate, per second,
// over about `half_life`), so that a refused client can be told honestly when to come back:
// Retry-After = (queue depth + 1) / rate, rounded up and clamped to [1, max]. Thread-safe.
class ServiceRate {
  public:
    explicit ServiceRate(Duration half_life = seconds(30)) : half_life_(half_life) {}

    void on_completion(TimePoint now);
    // Completions per second; 0 until anything completed.
    double rate(TimePoint now) const;
    // Seconds a client at position `queue_depth` should wait. With no measurement yet, one
    // second per waiting request.
    int retry_after_seconds(std::size_t queue_depth, TimePoint now, int max_seconds = 60) const;
    // The expected wait for a request joining behind `queue_depth` others.
    Duration expected_wait(std::size_t queue_depth, TimePoint now) const;

  private:
    double rate_locked(TimePoint now) const;

    Duration half_life_;
    mutable std::mutex mutex_;
    double rate_ = 0;  // decayed completions per second
    TimePoint last_{};
    TimePoint first_{};  // the first completion: how much history the rate has
    bool started_ = false;
};

}  // namespace llama_pool
