#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "common/clock.hpp"
#include "proxy/stored_reply.hpp"

namespace llama_pool {

// One request in flight under an Idempotency-Key, and its reply once it has one. The requests
// that attached to it wait here. Thread-safe.
class Flight {
  public:
    explicit Flight(std::string leader_request_id)
        : leader_request_id_(std::move(leader_request_id)) {}

    const std::string& leader_request_id() const { return leader_request_id_; }

    enum class WaitStatus { done, timeout, stopped };
    // Blocks until the leader finished, `deadline` passes, or `stop()` turns true (checked
    // every `poll`, e.g. "my own client hung up"). A blocking primitive on the steady clock,
    // like a condition variable; the policy (how long) is the caller's.
    WaitStatus wait(TimePoint deadline, Duration poll, const std::function<bool()>& stop) const;
    // Once done: the leader's reply, or null when it ended without a complete one; the key
    // is free again then, and the followers join anew (one of them leads the next attempt).
    std::shared_ptr<const StoredReply> reply() const;

  private:
    friend class Coalescer;
    void finish(std::shared_ptr<const StoredReply> reply);

    const std::string leader_request_id_;
    mutable std::mutex mutex_;
    mutable std::condition_variable cv_;
    bool done_ = false;
    std::shared_ptr<const StoredReply> reply_;
};

struct CoalescerLimits {
    Duration window = seconds(60);             // how long a finished key's reply is replayed
    std::size_t max_bytes = 16 * 1024 * 1024;  // replies kept for replay, oldest dropped first
};

// Requests that carry an Idempotency-Key, per scope (the client's credential or address plus
// the key, so clients never see each other's keys): the first leads and runs; the same key
// while it runs attaches to it; the same key within `window` after it finished replays its
// reply; the same key with a different request (method, target or body) is a conflict.
// Thread-safe; the window is measured on the injected TimeSource.
class Coalescer {
  public:
    Coalescer(CoalescerLimits limits, const TimeSource& time) : limits_(limits), time_(time) {}

    enum class Role { lead, attach, replay, conflict };
    struct Ticket {
        Role role = Role::lead;
        std::shared_ptr<Flight> flight;            // lead and attach
        std::shared_ptr<const StoredReply> reply;  // replay
    };
    Ticket join(const std::string& scope, std::uint64_t fingerprint, const std::string& request_id);

    // The leader's end, exactly once per lead ticket. A null `reply` frees the key (nothing
    // complete to share); otherwise the attached requests get it and, when `keep`, it is
    // replayed for the window (unless it alone is over the byte bound).
    void finish(const std::string& scope, const Ticket& lead,
                std::shared_ptr<const StoredReply> reply, bool keep);

    struct Stats {
        std::size_t in_flight = 0;
        std::size_t completed = 0;
        std::size_t bytes = 0;  // of the completed replies
    };
    // Drops what has expired first, so the counts are what a replay could still find.
    Stats stats();

  private:
    struct Entry {
        std::uint64_t fingerprint = 0;
        std::shared_ptr<Flight> flight;  // null once completed
        std::shared_ptr<const StoredReply> reply;
        std::size_t bytes = 0;
        TimePoint completed_at;
        std::list<std::string>::iterator completed_pos;
    };

    void expire_locked(TimePoint now);
    void erase_completed_locked(std::list<std::string>::iterator pos);

    const CoalescerLimits limits_;
    const TimeSource& time_;
    mutable std::mutex mutex_;
    std::unordered_map<std::string, Entry> entries_;
    std::list<std::string> completed_;  // scopes in the order they completed: oldest first
    std::size_t bytes_ = 0;
};

}  // namespace llama_pool
