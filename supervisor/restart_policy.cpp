#include "supervisor/restart_policy.hpp"

#include <fmt/format.h>

namespace llama_pool {

RestartPolicy::RestartPolicy(Duration backoff_base, Duration backoff_cap, int crash_loop_failures,
                             Duration crash_loop_window)
    : backoff_(backoff_base, backoff_cap),
      crash_loop_failures_(crash_loop_failures),
      crash_loop_window_(crash_loop_window) {}

RestartPolicy::Decision RestartPolicy::on_failure(TimePoint now, RandomSource& random) {
    recent_.push_back(now);
    while (!recent_.empty() && now - recent_.front() > crash_loop_window_) {
        recent_.pop_front();
    }
    Decision d;
    if (static_cast<int>(recent_.size()) >= crash_loop_failures_) {
        d.give_up = true;
        d.reason = fmt::format("crash loop: {} failures within {} s", recent_.size(),
                               to_seconds(crash_loop_window_));
        return d;
    }
    d.delay = backoff_.delay_at_least_half(consecutive_, random);
    ++consecutive_;
    return d;
}

void RestartPolicy::reset() {
    consecutive_ = 0;
    recent_.clear();
}

}  // namespace llama_pool
