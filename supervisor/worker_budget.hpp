#pragma once

#include <mutex>

namespace llama_pool {

// The pool-wide cap on llama-server processes (workers.max_total), shared by every group's
// supervisor. A worker holds one place from its creation until it is joined and removed, so
// restarts of the same worker keep its place and the cap holds at every moment, rollouts
// included. Thread-safe.
class WorkerBudget {
  public:
    explicit WorkerBudget(int limit) : limit_(limit) {}  // 0: no limit

    bool try_acquire() {
        std::lock_guard lock(mutex_);
        if (limit_ > 0 && in_use_ >= limit_) {
            return false;
        }
        ++in_use_;
        return true;
    }
    void release() {
        std::lock_guard lock(mutex_);
        if (in_use_ > 0) {
            --in_use_;
        }
    }
    int in_use() const {
        std::lock_guard lock(mutex_);
        return in_use_;
    }
    int limit() const { return limit_; }

  private:
    const int limit_;
    mutable std::mutex mutex_;
    int in_use_ = 0;
};

}  // namespace llama_pool
