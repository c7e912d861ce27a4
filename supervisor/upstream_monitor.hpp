#pragma once

#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

#include "common/clock.hpp"
#include "common/config.hpp"
#include "common/log.hpp"
#include "common/socket.hpp"
#include "supervisor/probes.hpp"
#include "supervisor/worker.hpp"
#include "supervisor/worker_listener.hpp"

namespace llama_pool {

// An upstream the pool fronts but does not manage: a llama-server (or another llama-pool) on
// another machine. It gets the same treatment as a managed worker minus the process: it
// takes traffic only after /health is ok and a one-token completion came back, it is probed,
// and it leaves rotation when probes fail, coming back by itself when it recovers.
//
//   starting (no answer) -> loading (503) -> warming -> ready
//   ready -> backoff after health_failures failed probes -> starting (probing again)
//
// One owner thread runs it and is the only writer of its state; it sleeps until the next
// probe is due or a stop is requested. Thread-safe otherwise.
class UpstreamMonitor {
  public:
    // `time`: what every probe deadline reads; null for the steady clock.
    UpstreamMonitor(std::string id, UpstreamAddress address, PoolConfig config, Logger& log,
                    WorkerListener& listener, const TimeSource* time = nullptr);
    ~UpstreamMonitor();
    UpstreamMonitor(const UpstreamMonitor&) = delete;
    UpstreamMonitor& operator=(const UpstreamMonitor&) = delete;

    void start();
    void request_stop();
    void join();
    WorkerStatus status() const;
    const std::string& id() const { return id_; }

  private:
    void run();
    void step();
    void fail(FailureKind kind, const std::string& reason);
    // The stall watchdog's look; true when it failed the upstream as stalled.
    bool stalled(TimePoint now, milliseconds timeout);
    ProbeTarget target() const;

    const std::string id_;
    const UpstreamAddress address_;
    const PoolConfig config_;
    Logger& log_;
    WorkerListener& listener_;
    const TimeSource& time_;
    WakeSignal wake_;
    Lifecycle lifecycle_;  // the state: written by the owner thread only

    // Owner thread only.
    int failures_ = 0;
    int capacity_ = 0;  // slots read at warm-up, what worker_ready() publishes
    bool published_ = false;
    bool completion_suspect_ = false;
    StallDetector stall_;
    TimePoint next_probe_{};
    TimePoint last_completion_probe_{};

    // Guarded by mutex_: the rest of the snapshot (restarts) and the stop request. Never
    // held while lifecycle_'s lock is taken.
    mutable std::mutex mutex_;
    std::condition_variable cv_;
    WorkerStatus status_;
    bool stop_requested_ = false;
    std::thread thread_;
};

}  // namespace llama_pool
