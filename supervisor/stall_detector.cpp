#include "supervisor/stall_detector.hpp"

namespace llama_pool {

std::string_view to_string(StallVerdict verdict) {
    switch (verdict) {
        case StallVerdict::idle:
            return "idle";
        case StallVerdict::progressing:
            return "progressing";
        case StallVerdict::quiet:
            return "quiet";
        case StallVerdict::stalled:
            return "stalled";
    }
    return "unknown";
}

StallVerdict StallDetector::observe(TimePoint now, int inflight, std::uint64_t progress) {
    if (inflight <= 0) {
        last_.reset();
        return StallVerdict::idle;
    }
    if (!last_ || last_->progress != progress) {
        // The first look with work in flight starts the clock: a request may have started
        // just before it.
        last_ = Seen{progress, now};
        return StallVerdict::progressing;
    }
    if (timeout_ > Duration::zero() && now - last_->since >= timeout_) {
        return StallVerdict::stalled;
    }
    return StallVerdict::quiet;
}

StallVerdict StallDetector::look(TimePoint now, int inflight, std::uint64_t relayed,
                                 const std::optional<WorkerProgress>& metrics) {
    if (inflight > 0 && metrics && metrics->processing == 0) {
        // It answers from its main loop and generates for nobody: our requests are waiting
        // on their clients (a slow reader), not on it.
        reset();
        return StallVerdict::progressing;
    }
    if (metrics && metrics->has_work) {
        work_ = metrics->work;
    }
    // A stuck llama-server does not answer /metrics (its main loop does): the counters then
    // keep their last value, which is what "no progress" looks like.
    return observe(now, inflight, work_ + relayed);
}

Duration StallDetector::quiet_for(TimePoint now) const {
    return last_ ? now - last_->since : Duration::zero();
}

}  // namespace llama_pool
