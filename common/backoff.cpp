#include "common/backoff.hpp"

#include <algorithm>

namespace llama_pool {

Duration ExponentialBackoff::ceiling(int attempt) const {
    Duration d = base_;
    for (int i = 0; i < attempt && d < cap_; ++i) {
        d *= 2;
    }
    return std::min(d, cap_);
}

Duration ExponentialBackoff::delay(int attempt, RandomSource& random) const {
    const auto top = ceiling(attempt);
    return std::chrono::duration_cast<Duration>(top * random.uniform());
}

Duration ExponentialBackoff::delay_at_least_half(int attempt, RandomSource& random) const {
    const auto top = ceiling(attempt);
    return top / 2 + std::chrono::duration_cast<Duration>((top / 2) * random.uniform());
}

}  // namespace llama_pool
