#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/config.hpp"
#include "common/log.hpp"
#include "common/random.hpp"
#include "supervisor/upstream_monitor.hpp"
#include "supervisor/worker.hpp"
#include "supervisor/worker_budget.hpp"
#include "supervisor/worker_listener.hpp"

namespace llama_pool {

// How a supervisor fits among the groups of a pool.
struct SupervisorOptions {
    std::string id_prefix;           // worker ids are prefix + a number ("chat.0"); "" for "0"
    int initial_workers = -1;        // workers started by start(); -1: config.workers
    int min_workers = -1;            // a rollout never leaves fewer; -1: config.workers
    WorkerBudget* budget = nullptr;  // the pool-wide process cap; null: none
};

// Owns one group's workers: creates them from the config, hands out their ports, answers
// status questions, grows and shrinks the group, and stops them all. Thread-safe.
//
// Lock order: stop_mutex_ -> mutex_ -> a worker's or monitor's own mutex (status()).
// ports_mutex_ is a leaf: worker owner threads take it (pick_port) and no other lock of
// ours, so they never wait for mutex_. No thread is joined while mutex_ is held, except a
// finished rollout thread that takes mutex_ no more.
class Supervisor {
  public:
    Supervisor(PoolConfig config, Logger& log, WorkerListener& listener, RandomSource& random,
               SupervisorOptions options = {});
    ~Supervisor();
    Supervisor(const Supervisor&) = delete;
    Supervisor& operator=(const Supervisor&) = delete;

    void start();
    // Drains every worker (in parallel, up to `drain_grace`), stops them, joins their threads.
    // Calls from several threads run one after the other.
    void stop(Duration drain_grace);
    // Asks every worker to stop now, without waiting; a stop() running elsewhere then ends
    // quickly. Never waits for stop().
    void hurry();

    enum class RolloutStart { started, already_running, stopping };
    // Replaces the workers one at a time with workers built from `target`: each new worker
    // is warmed up before an old one is drained, so capacity never drops below what was
    // there minus nothing. Runs on its own thread; returns at once. A new worker that cannot
    // get ready aborts the rollout and leaves the old workers serving.
    RolloutStart rolling_restart(const PoolConfig& target);
    bool rollout_running() const;
    PoolConfig config() const;

    // One more worker, if the config's workers and the budget allow; false otherwise.
    bool add_worker();
    // Drains (up to `drain_grace`) and stops one worker, preferring one that is not ready,
    // then the one with the fewest requests in flight; waits until it is gone. False when
    // there is none.
    bool retire_one(Duration drain_grace);
    // Worker processes this supervisor has (any state), upstream monitors not included.
    int worker_count() const;

    std::vector<WorkerStatus> status() const;
    std::optional<std::vector<std::string>> worker_output(const std::string& id) const;
    bool restart_worker(const std::string& id);
    int threads_per_worker() const { return threads_; }

  private:
    std::uint16_t pick_port();
    // Null when the budget has no place left.
    std::unique_ptr<Worker> make_worker_locked(const PoolConfig& config);
    void run_rollout(PoolConfig target);
    // Waits until the worker is ready (true) or failed, stopping, or out of time (false).
    bool wait_ready(Worker& worker, Duration timeout);
    void retire(const std::string& id, Duration drain_grace);
    struct DiscoveredName {
        std::string id;               // "u<index>"; its monitors are "u<index>/<address>"
        UpstreamAddress address;      // the name and port
        std::set<std::string> known;  // addresses with a monitor
    };
    void run_discovery();
    void sync_discovered_locked(DiscoveredName& target, const std::vector<std::string>& addresses,
                                std::unique_lock<std::mutex>& lock);

    PoolConfig config_;
    SupervisorOptions options_;
    Logger& log_;
    WorkerListener& listener_;
    RandomSource& random_;
    int threads_ = 1;
    std::string api_key_;

    std::mutex stop_mutex_;  // one stop() at a time: they join the same threads

    mutable std::mutex mutex_;
    std::condition_variable cv_;
    std::vector<std::unique_ptr<Worker>> workers_;
    std::vector<std::unique_ptr<UpstreamMonitor>> upstreams_;  // static ones and discovered
    std::vector<DiscoveredName> discovered_;                   // dns:// names, fixed at start
    std::thread discovery_thread_;
    int next_id_ = 0;  // ids are never reused, so a replacement is told apart from the old one
    bool stopping_ = false;
    bool rollout_running_ = false;
    std::thread rollout_thread_;

    std::mutex ports_mutex_;  // a leaf: see the lock order above
    std::set<std::uint16_t> recent_ports_;
};

// 128 random bits as hex, from the kernel's CSPRNG.
std::string random_key();

}  // namespace llama_pool
