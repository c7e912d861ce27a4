#pragma once

#include <deque>
#include <string>

#include "common/backoff.hpp"
#include "common/clock.hpp"
#include "common/random.hpp"

namespace llama_pool {

// Decides what follows a worker failure: restart after a backoff delay, or give up because
// the worker is crash-looping. Pure: time and randomness come in as arguments.
class RestartPolicy {
  public:
    struct Decision {
        bool give_up = false;
        Duration delay{};
        std::string reason;  // set when giving up
    };

    RestartPolicy(Duration backoff_base, Duration backoff_cap, int crash_loop_failures,
                  Duration crash_loop_window);

    Decision on_failure(TimePoint now, RandomSource& random);
    // A worker that reached ready starts its backoff over; the crash-loop window still
    // remembers recent failures, so crash-right-after-ready loops are caught too.
    void on_ready() { consecutive_ = 0; }
    // An admin restart forgets everything.
    void reset();

    int consecutive_failures() const { return consecutive_; }

  private:
    ExponentialBackoff backoff_;
    int crash_loop_failures_;
    Duration crash_loop_window_;
    int consecutive_ = 0;
    std::deque<TimePoint> recent_;
};

}  // namespace llama_pool
