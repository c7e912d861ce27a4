#pragma once

#include <mutex>

namespace llama_pool {

// Caps retries to a share of the requests in flight, with a floor so that a quiet pool can
// still retry (Envoy's retry budget). Without it, a pool-wide failure turns every request
// into `attempts` requests and multiplies the load on whatever still works.
// Thread-safe.
class RetryBudget {
  public:
    RetryBudget(double ratio, int min_concurrent) : ratio_(ratio), min_(min_concurrent) {}

    // Bracket every client request with these.
    void request_started();
    void request_finished();
    // Takes a retry slot if the budget allows one now; give it back with retry_finished().
    // `floor` raises the minimum for this call. The pool passes its total slot count: leases
    // already cap concurrent requests at the slots, so retries up to that many cannot push a
    // worker past its capacity, and every request a dying worker had can be retried.
    bool try_start_retry(int floor = 0);
    void retry_finished();

    int active_requests() const;
    int active_retries() const;

  private:
    mutable std::mutex mutex_;
    double ratio_;
    int min_;
    int requests_ = 0;
    int retries_ = 0;
};

}  // namespace llama_pool
