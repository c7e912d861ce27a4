#pragma once

#include <atomic>

#include "common/socket.hpp"

namespace llama_pool {

// Cancellation for work done on several threads: a flag to check between steps and a file
// descriptor that wakes blocking I/O (it goes into IoWatch::cancel_fd). Once cancelled it
// stays cancelled.
class CancelToken {
  public:
    void cancel() {
        if (!cancelled_.exchange(true)) {
            wake_.notify();
        }
    }
    bool cancelled() const { return cancelled_.load(); }
    int fd() const { return wake_.fd(); }

  private:
    std::atomic<bool> cancelled_{false};
    WakeSignal wake_;
};

}  // namespace llama_pool
