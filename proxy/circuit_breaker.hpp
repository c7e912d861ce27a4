#pragma once

#include <array>
#include <cstdint>
#include <string_view>

#include "common/clock.hpp"

namespace llama_pool {

enum class BreakerState { closed, open, half_open };
std::string_view to_string(BreakerState state);

struct BreakerConfig {
    int consecutive_failures = 5;  // this many failures in a row open the breaker
    double failure_ratio = 0.5;    // or this share of failures over the window...
    int ratio_min_requests = 10;   // ...once the window holds at least this many outcomes
    Duration window = seconds(30);
    Duration base_ejection = seconds(30);  // first open period; doubles per re-ejection
    Duration max_ejection = seconds(300);
    int half_open_trials = 1;  // requests let through at once while half-open
    bool operator==(const BreakerConfig&) const = default;
};

// One worker's circuit breaker. closed: traffic flows, outcomes are counted. open: no
// traffic until the ejection time has passed. half_open: up to `half_open_trials` requests
// at once; one success closes it, one failure opens it again for twice as long (up to
// max_ejection). The ejection length resets after the breaker has stayed closed for
// max_ejection. A worker that answers 5xx instantly is failing, however fast: counting it
// keeps a least-loaded balancer from pouring traffic into it.
//
// Pure: time comes in as arguments. Not thread-safe; the registry calls it under its lock.
class CircuitBreaker {
  public:
    explicit CircuitBreaker(BreakerConfig config = {}) : config_(config) {}

    BreakerState state(TimePoint now);
    // Whether a request may go to this worker now. In half-open, a true answer takes a
    // trial slot that the next on_success/on_failure gives back.
    bool try_acquire(TimePoint now);
    void on_success(TimePoint now);
    void on_failure(TimePoint now);
    // A request that ended without a verdict on the worker (its client left first): gives
    // back the half-open trial slot it may hold and changes nothing else. Without it, a
    // trial whose client hung up kept its slot forever and the worker never served again.
    void on_abandoned(TimePoint now);

    // When an open breaker lets trials through again (meaningful when open).
    TimePoint reopens_at() const { return open_until_; }
    int ejections() const { return ejections_total_; }
    int consecutive_failures() const { return consecutive_; }

  private:
    static constexpr int kBuckets = 10;
    struct Bucket {
        std::int64_t epoch = -1;
        int successes = 0;
        int failures = 0;
    };
    Bucket& bucket(TimePoint now);
    void count(TimePoint now, bool success);
    bool ratio_exceeded(TimePoint now);
    void open(TimePoint now);

    BreakerConfig config_;
    BreakerState state_ = BreakerState::closed;
    int consecutive_ = 0;
    int trials_in_flight_ = 0;
    int reejections_ = 0;  // ejections since the breaker last stayed closed long enough
    int ejections_total_ = 0;
    TimePoint open_until_{};
    TimePoint closed_since_{};
    std::array<Bucket, kBuckets> buckets_{};
};

}  // namespace llama_pool
