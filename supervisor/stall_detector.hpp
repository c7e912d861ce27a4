#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "common/clock.hpp"

namespace llama_pool {

enum class StallVerdict {
    idle,         // nothing in flight: nothing to watch
    progressing,  // the progress signal moved since the last look
    quiet,        // in flight and not moving, for less than the timeout
    stalled,      // in flight and not moving for the timeout: take it out and replace it
};
std::string_view to_string(StallVerdict verdict);

// What a worker's /metrics says about its work.
struct WorkerProgress {
    // The sum of llama.cpp's work counters (decode calls, tokens predicted, prompt tokens
    // processed): it grows while the server works, and only then.
    std::uint64_t work = 0;
    bool has_work = false;  // any of those counters was there
    int processing = -1;    // llamacpp:requests_processing; -1 when absent
};

// Whether a worker with requests in flight makes progress. Fed at every probe with the
// number of requests in flight and a progress signature: any number that changes when the
// worker does work (its llama.cpp decode and token counters plus the bytes the pool relayed
// from it). /health says nothing here: a llama-server whose decode loop is stuck answers it
// in under a millisecond. Pure: time is passed in.
class StallDetector {
  public:
    // `timeout` zero or less: never stalled.
    explicit StallDetector(Duration timeout) : timeout_(timeout) {}

    StallVerdict observe(TimePoint now, int inflight, std::uint64_t progress);
    // How long the signal has not moved while requests were in flight.
    Duration quiet_for(TimePoint now) const;
    void reset() {
        last_.reset();
        work_ = 0;
    }

    // One look with everything the watchdog knows: `relayed` is the bytes the pool read from
    // the worker, `metrics` its /metrics (empty when it did not answer, or was not asked
    // because nothing is in flight).
    StallVerdict look(TimePoint now, int inflight, std::uint64_t relayed,
                      const std::optional<WorkerProgress>& metrics);

  private:
    struct Seen {
        std::uint64_t progress = 0;
        TimePoint since{};  // when it last moved (or requests started being watched)
    };
    Duration timeout_;
    std::optional<Seen> last_;
    std::uint64_t work_ = 0;  // the worker's counters at the last answer
};

}  // namespace llama_pool
