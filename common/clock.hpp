#pragma once

#include <chrono>

namespace llama_pool {

using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;
using Duration = Clock::duration;
using std::chrono::milliseconds;
using std::chrono::seconds;

// Every timing policy (backoff, probes, breakers, deadlines) reads time through this
// interface so that unit tests drive it with a fake clock instead of sleeping.
class TimeSource {
  public:
    virtual ~TimeSource() = default;
    virtual TimePoint now() const = 0;
};

class SteadyTimeSource final : public TimeSource {
  public:
    TimePoint now() const override { return Clock::now(); }
};

// Config values are seconds as doubles; timers want a Duration.
inline Duration from_seconds(double s) {
    return std::chrono::duration_cast<Duration>(std::chrono::duration<double>(s));
}

inline double to_seconds(Duration d) {
    return std::chrono::duration<double>(d).count();
}

inline long long to_millis(Duration d) {
    return std::chrono::duration_cast<milliseconds>(d).count();
}

}  // namespace llama_pool
