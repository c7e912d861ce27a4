#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.hpp"
#include "common/config.hpp"
#include "common/log.hpp"
#include "common/random.hpp"
#include "common/socket.hpp"
#include "supervisor/child_process.hpp"
#include "supervisor/lifecycle.hpp"
#include "supervisor/probes.hpp"
#include "supervisor/restart_policy.hpp"
#include "supervisor/secret_file.hpp"
#include "supervisor/stall_detector.hpp"
#include "supervisor/worker_listener.hpp"
#include "supervisor/worker_output.hpp"
#include "supervisor/worker_state.hpp"

namespace llama_pool {

struct WorkerStatus {
    std::string id;
    pid_t pid = 0;
    std::uint16_t port = 0;
    WorkerState state = WorkerState::starting;
    std::chrono::system_clock::time_point since;
    int restarts = 0;
    std::string last_exit_reason;          // the last failure's message, for people
    std::vector<std::string> last_output;  // the lines that explain the last failure
    // No slot count here: the backend registry's, which admission enforces, is the one that
    // /pool/status and /metrics show.
    std::string detail;  // e.g. loading progress, backoff delay
    // Failures by kind, for the restarts metric.
    std::map<FailureKind, int> failures_by_reason;
    bool managed = true;  // false for an upstream the pool fronts but does not run
};

// `base` (the fields its owner keeps) completed with what its lifecycle core holds.
WorkerStatus with_lifecycle(WorkerStatus base, const Lifecycle::Snapshot& life);

struct WorkerSettings {
    std::string id;
    PoolConfig config;
    int threads = 1;
    std::string api_key;
    std::function<std::uint16_t()> pick_port;  // returns a free loopback port
    const TimeSource* time = nullptr;          // every deadline reads it; null: steady
};

// One supervised llama-server. A single owner thread runs the whole lifecycle and is the
// only writer of the state; other threads read snapshots (status()) and send requests
// (request_restart(), request_stop()) that wake the owner at once. Between steps the owner
// sleeps until its next deadline (a probe, the end of a backoff) or an event: a request, or
// the child's output closing (it exited).
class Worker {
  public:
    // The output kept per worker: the first lines of its current start, then the latest.
    static constexpr std::size_t kOutputHeadLines = 60;
    static constexpr std::size_t kOutputLines = 200;

    Worker(WorkerSettings settings, Logger& log, WorkerListener& listener, RandomSource& random);
    ~Worker();
    Worker(const Worker&) = delete;
    Worker& operator=(const Worker&) = delete;

    void start();
    // Restarts a failed worker, or replaces a running one (drains it first).
    void request_restart();
    // Drains (up to `drain_grace` for in-flight requests), stops the process, ends the owner
    // thread. Returns at once; join() waits.
    void request_stop(Duration drain_grace);
    void join();

    WorkerStatus status() const;
    std::vector<std::string> recent_output() const;
    const std::string& id() const { return settings_.id; }

  private:
    void run();
    void spawn();
    void step_starting();
    void step_warming();
    void step_ready();
    void step_backoff();
    void fail(FailureKind kind, const std::string& reason);
    // The stall watchdog's look at a ready worker; true when it found it stalled and
    // failed it (out of rotation, process stopped, restart scheduled).
    bool stalled(TimePoint now);
    void drain_and_stop();
    bool warm_up(std::string& error, int& capacity);
    ProbeTarget probe_target() const;
    void on_output(std::string_view line);
    std::vector<std::string> tail_output(std::size_t n) const;
    // When the owner must look again without an event: by state, after the step.
    std::optional<TimePoint> next_wake() const;
    // Sleeps until `until` (forever when empty) or an event.
    void wait_for_event(std::optional<TimePoint> until);

    WorkerSettings settings_;
    Logger& log_;
    WorkerListener& listener_;
    RandomSource& random_;
    const TimeSource& time_;
    RestartPolicy restart_policy_;
    StallDetector stall_;  // owner thread only
    Lifecycle lifecycle_;  // the state: written by the owner thread only
    WakeSignal wake_;      // interrupts blocking probes at stop

    // Owned by the owner thread only.
    std::unique_ptr<ChildProcess> child_;
    // The per-boot key in a private file, from spawn until the child answers on its port
    // (it has read the file by then): on disk for seconds, not for the pool's lifetime.
    std::unique_ptr<SecretFile> key_file_;
    TimePoint spawned_at_{};
    TimePoint backoff_until_{};
    TimePoint next_health_{};
    TimePoint last_inference_probe_{};
    TimePoint last_progress_log_{};
    int probe_failures_ = 0;
    int capacity_ = 0;  // slots read at warm-up, what worker_ready() publishes
    bool published_ = false;
    bool port_verified_ = false;
    bool completion_suspect_ = false;  // the last completion probe failed
    // The child closed its output: it is exiting. Its exit is polled for at a short interval
    // until reaped (the pipe closes a moment before the process is gone).
    bool child_closing_ = false;

    // Guarded by mutex_: the rest of the snapshot others read (pid, port, restarts), and
    // the events that wake the owner. Lock order: mutex_ is never held while lifecycle_'s
    // lock is taken, nor the other way round.
    mutable std::mutex mutex_;
    std::condition_variable cv_;
    WorkerStatus status_;
    bool stop_requested_ = false;
    bool restart_requested_ = false;
    bool child_event_ = false;  // the child's output closed: it has exited or is about to
    Duration drain_grace_{};
    // Set with a zero drain_grace_: read without the lock by the registry's drain wait.
    std::atomic<bool> hurried_{false};

    mutable std::mutex output_mutex_;
    OutputRing output_{kOutputHeadLines, kOutputLines - kOutputHeadLines};
    std::atomic<bool> output_starting_{true};  // set at spawn, cleared at ready

    std::thread thread_;
};

}  // namespace llama_pool
