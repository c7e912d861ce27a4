#include "proxy/retry_budget.hpp"

#include <algorithm>
#include <cmath>

namespace llama_pool {

void RetryBudget::request_started() {
    std::lock_guard lock(mutex_);
    ++requests_;
}

void RetryBudget::request_finished() {
    std::lock_guard lock(mutex_);
    // Clamped so that an unmatched call cannot leave the budget permanently too small.
    requests_ = std::max(0, requests_ - 1);
}

bool RetryBudget::try_start_retry(int floor) {
    std::lock_guard lock(mutex_);
    const int share = static_cast<int>(std::floor(ratio_ * requests_));
    if (retries_ >= std::max({min_, floor, share})) {
        return false;
    }
    ++retries_;
    return true;
}

void RetryBudget::retry_finished() {
    std::lock_guard lock(mutex_);
    retries_ = std::max(0, retries_ - 1);
}

int RetryBudget::active_requests() const {
    std::lock_guard lock(mutex_);
    return requests_;
}

int RetryBudget::active_retries() const {
    std::lock_guard lock(mutex_);
    return retries_;
}

}  // namespace llama_pool
