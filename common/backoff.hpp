#pragma once

#include "common/clock.hpp"
#include "common/random.hpp"

namespace llama_pool {

// Exponential backoff with "full jitter": attempt n waits a uniform random time in
// [0, min(cap, base * 2^n)]. Full jitter spreads synchronized retries (many requests
// failing on the same dead worker) instead of moving them in lockstep.
class ExponentialBackoff {
  public:
    ExponentialBackoff(Duration base, Duration cap) : base_(base), cap_(cap) {}

    // The ceiling for attempt `attempt` (0-based), before jitter.
    Duration ceiling(int attempt) const;
    // A jittered delay in [0, ceiling(attempt)].
    Duration delay(int attempt, RandomSource& random) const;
    // A delay in [ceiling/2, ceiling]: used where a zero wait would be wrong (restarting a
    // crashed process immediately defeats the point of backing off).
    Duration delay_at_least_half(int attempt, RandomSource& random) const;

  private:
    Duration base_;
    Duration cap_;
};

}  // namespace llama_pool
