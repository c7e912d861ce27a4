#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/log.hpp"
#include "supervisor/worker_state.hpp"

namespace llama_pool {

// A state change the transition table forbids: a bug in the owner's code, never a runtime
// condition. It is thrown, so a test that drives a worker or a monitor into one fails at
// that line instead of logging and going on in a state nobody planned for.
class IllegalTransition : public std::logic_error {
  public:
    IllegalTransition(const std::string& id, WorkerState from, WorkerState to);
    WorkerState from;
    WorkerState to;
};

// The lifecycle core that Worker (a process the pool runs) and UpstreamMonitor (a server it
// only watches) share: the state, checked against the one transition table; what the
// current state is doing (`detail`); the failure record; a log line and the observers on
// every change.
//
// Thread contract: transition(), set_detail() and fail() are called by the owner thread
// only (the single writer); snapshot() and state() from any thread. Observers run on the
// owner thread, after the change is visible to snapshot(), with no lock of ours held.
class Lifecycle {
  public:
    struct Change {
        WorkerState from;
        WorkerState to;
        std::string detail;
    };
    using Observer = std::function<void(const Change&)>;

    struct Snapshot {
        WorkerState state = WorkerState::starting;
        std::chrono::system_clock::time_point since;
        // What the current state is doing or why it was entered (loading progress, the
        // backoff delay and its cause); empty when there is nothing to add.
        std::string detail;
        std::string last_failure;              // the last failure's message, for people
        std::vector<std::string> last_output;  // the lines that explain it, if any
        std::map<FailureKind, int> failures;   // by kind: the restarts metric
    };

    // `component` and `state_event` name the log line of each change, `failed_event` that
    // of each failure; `fields` go on every line (the worker id, an upstream's address).
    Lifecycle(Logger& log, std::string component, std::string state_event, std::string failed_event,
              nlohmann::json fields);

    // Owner thread. The same state again only replaces the detail (no log line, no observer
    // call). Throws IllegalTransition when the table forbids the change.
    void transition(WorkerState next, std::string detail = {});
    // Owner thread. Replaces the detail of the current state.
    void set_detail(std::string detail);
    // Owner thread. Records a failure of `kind`, logs it (at warn, with `log_fields`) and
    // moves to `next` (backoff, or failed when giving up) with `detail`.
    void fail(FailureKind kind, const std::string& message, std::vector<std::string> last_output,
              WorkerState next, std::string detail, nlohmann::json log_fields = {});
    // Before start only.
    void observe(Observer observer);

    WorkerState state() const;
    Snapshot snapshot() const;

  private:
    Logger& log_;
    const std::string component_;
    const std::string state_event_;
    const std::string failed_event_;
    const nlohmann::json fields_;
    std::vector<Observer> observers_;

    mutable std::mutex mutex_;  // a leaf: nothing else is locked while it is held
    Snapshot snapshot_;
};

}  // namespace llama_pool
