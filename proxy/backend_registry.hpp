#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/clock.hpp"
#include "common/random.hpp"
#include "common/socket.hpp"
#include "proxy/circuit_breaker.hpp"
#include "proxy/fair_queue.hpp"
#include "proxy/upstream_pool.hpp"
#include "supervisor/worker_listener.hpp"

namespace llama_pool {

// A backend the proxy can send requests to. Shared with leases, so a backend removed while
// requests run on it stays alive until the last of them ends.
struct Backend {
    Backend(const WorkerEndpoint& endpoint, std::size_t max_idle)
        : id(endpoint.id),
          api_key(endpoint.api_key),
          pool(endpoint.host, endpoint.port, max_idle) {}
    const std::string id;
    const std::string api_key;
    UpstreamPool pool;
    // Response bytes read from it by relayed requests: the part of its progress the stall
    // watchdog sees without asking the worker (a stream that moves is a worker that works).
    std::atomic<std::uint64_t> received{0};
};

class BackendRegistry;

// Whether a request takes one of a worker's generation slots or only a connection to it.
enum class LeaseKind { slot, light };

// The right to send one request to one backend. Releases its slot when destroyed, which
// hands the slot to the oldest waiting request (a light lease: its connection, to a waiting
// light request). Tied to the registry entry it was taken on
// (by its serial), not to the id: an entry removed and added again under the same id is a
// new entry, whose count the old leases must not touch. Counts for its tenant's
// concurrency too, until it is released.
class Lease {
  public:
    Lease(BackendRegistry* registry, std::shared_ptr<Backend> backend, std::uint64_t entry_serial,
          std::string tenant_id, LeaseKind kind = LeaseKind::slot)
        : registry_(registry),
          backend_(std::move(backend)),
          entry_serial_(entry_serial),
          tenant_id_(std::move(tenant_id)),
          kind_(kind) {}
    Lease(Lease&& other) noexcept
        : registry_(std::exchange(other.registry_, nullptr)),
          backend_(std::move(other.backend_)),
          entry_serial_(other.entry_serial_),
          tenant_id_(std::move(other.tenant_id_)),
          kind_(other.kind_) {}
    Lease& operator=(Lease&&) = delete;
    Lease(const Lease&) = delete;
    ~Lease();

    Backend& backend() const { return *backend_; }
    const std::shared_ptr<Backend>& shared_backend() const { return backend_; }

  private:
    BackendRegistry* registry_;
    std::shared_ptr<Backend> backend_;
    std::uint64_t entry_serial_;
    std::string tenant_id_;
    LeaseKind kind_;
};

enum class BalancerPolicy { least_loaded, round_robin, prefix_affinity };
BalancerPolicy parse_balancer_policy(std::string_view name);

struct RegistryOptions {
    BalancerPolicy policy = BalancerPolicy::least_loaded;
    std::size_t queue_max = 256;
    BreakerConfig breaker;
    // A waiter's priority class rises by one per this much waiting (0: strict classes).
    Duration priority_aging = seconds(30);
    // Light requests (no generation slot) in flight to one backend at once.
    int light_per_worker = 8;
};

struct BackendSnapshot {
    std::string id;
    std::string host;
    std::uint16_t port = 0;
    bool available = false;
    int capacity = 0;
    int inflight = 0;
    std::uint64_t connections_opened = 0;
    std::string api_key;  // for the pool's own calls to the worker; never shown or logged
    BreakerState breaker = BreakerState::closed;
    int ejections = 0;
    // The slots it serves now: its capacity while it takes traffic, none otherwise. The one
    // figure /pool/status and /metrics both show.
    int serving_slots() const { return available ? capacity : 0; }
};

// Which backends can take traffic now and how much. A request waits in the pool's own queue
// (not in a worker's unbounded one); a slot that frees up goes to the waiter the FairQueue
// puts first: tenants share slots by weight and priority, and within a tenant the oldest
// waiter goes first. With one tenant that is plain FIFO. Thread-safe.
class BackendRegistry final : public WorkerListener {
    struct Waiter;  // one queued request: below

  public:
    enum class AcquireStatus { ok, timeout, cancelled, shutdown, queue_full };
    struct AcquireResult {
        AcquireStatus status = AcquireStatus::timeout;
        std::optional<Lease> lease;
    };

    BackendRegistry(RandomSource& random, const TimeSource& time, RegistryOptions options = {})
        : random_(random), time_(time), options_(options) {}

    // The clock its queue runs on; the relay reads time from it too.
    const TimeSource& time() const { return time_; }

    // A request's place in the queue, for a caller that waits in an event loop (or polls its
    // fd()). fd() turns readable when the place may have been served (a slot handed to it; for
    // a light request, a connection came free) or the registry shut down; take() then says.
    // Destroying it leaves the queue, or gives back a slot it was handed and never took. The
    // registry must outlive it.
    class Place {
      public:
        ~Place();
        struct Key {  // only the registry makes places
          private:
            friend class BackendRegistry;
            Key() = default;
        };
        Place(Key, BackendRegistry& registry, LeaseKind kind, WakeSignal signal)
            : registry_(registry), kind_(kind), signal_(std::move(signal)) {}
        Place(const Place&) = delete;
        Place& operator=(const Place&) = delete;
        int fd() const { return signal_.fd(); }
        // The lease once served, `shutdown` once the registry shut down; nullopt while it
        // waits. Never blocks.
        std::optional<AcquireResult> take();

      private:
        friend class BackendRegistry;
        BackendRegistry& registry_;
        const LeaseKind kind_;
        WakeSignal signal_;
        FairQueue::Ticket ticket_{};
        std::unique_ptr<Waiter> waiter_;  // a slot place's, while it is queued
        // A light place's: what it avoids, its entry in the registry's FIFO while it waits,
        // and the connection handed to it.
        std::set<std::string> light_avoid_;
        bool light_waiting_ = false;
        std::list<Place*>::iterator light_entry_;
        std::shared_ptr<Backend> light_backend_;
        std::uint64_t light_serial_ = 0;
    };
    // A slot for a generation request: a lease at once (`ok`), a refusal at once
    // (`queue_full` when queue_max requests already wait, `shutdown`), or `timeout` with
    // `place` set: the request waits in the fair queue (and counts as waiting) until `place`
    // is served or destroyed. The caller keeps its own deadline and watches its own client.
    // Backends in `avoid` are used only when no other one has a free slot; ejected (breaker
    // open) ones only when every available one is ejected. `affinity_key` (0 = none) steers
    // prefix-affinity. `tenant` is who asks, and must outlive `place`.
    //
    // try_acquire_light is the same for a request that takes no generation slot (/tokenize,
    // /props, ...): it waits only for a connection to a ready backend, at most
    // `light_per_worker` each, never behind queued generations, in a FIFO of its own. Backends
    // in `avoid` only when no other one can take it; ejected ones not at all (a light request
    // is no breaker trial).
    AcquireResult try_acquire(const std::set<std::string>& avoid, std::uint64_t affinity_key,
                              const TenantTicket& tenant, std::unique_ptr<Place>& place);
    AcquireResult try_acquire_light(const std::set<std::string>& avoid,
                                    std::unique_ptr<Place>& place);

    struct BreakerChange {
        BreakerState before = BreakerState::closed;
        BreakerState after = BreakerState::closed;
    };
    // The outcome of one attempt on a backend, for its circuit breaker.
    BreakerChange report(const std::string& id, bool success);
    // An attempt that ended without telling anything about the backend (the client left):
    // only gives back a half-open trial slot. Every attempt ends in exactly one report.
    void report_abandoned(const std::string& id);
    // Nothing listens there (connection refused): the process is gone or restarting. No new
    // request goes there for a moment, or until it is published ready again, so requests
    // stop piling onto a dead worker before its probes or breaker have noticed.
    void report_refused(const std::string& id);
    // The slots of all available backends together.
    int total_capacity() const;
    // The slots of every known backend, available or not: the retry budget's floor, since
    // when a worker dies, the requests it held are exactly the retries to allow.
    int configured_capacity() const;

    void worker_ready(const WorkerEndpoint& endpoint) override;
    void worker_unavailable(const std::string& id) override;
    int worker_inflight(const std::string& id) const override;
    void wait_idle(const std::string& id, Duration timeout,
                   const std::atomic<bool>& hurried) const override;
    void wake_idle_waiters() override;
    std::uint64_t worker_progress(const std::string& id) const override;
    void worker_removed(const std::string& id) override;

    // The moments a group scaler may have to look again: a request starts waiting (in the
    // queue, or as the first light waiter), or the last request in flight ends. Called with
    // the registry's lock held, so it must only record and wake (lock order: registry, then
    // the hook's). Set before traffic starts.
    enum class Activity { waiting, idle };
    void set_activity_hook(std::function<void(Activity)> hook) { activity_hook_ = std::move(hook); }
    // When a request last entered or left this registry (start: construction).
    TimePoint last_active() const;
    // Requests in flight on every backend together, light ones included.
    int inflight_total() const;

    void shutdown();
    // Not const: reading a breaker's state moves an expired ejection to half-open.
    std::vector<BackendSnapshot> snapshot();
    std::size_t waiting() const;
    // Waiters a new request of `tenant` would have ahead of it.
    std::size_t waiting_ahead_of(const TenantTicket& tenant) const;
    std::vector<FairQueue::TenantStats> queue_by_tenant() const;
    int available_count() const;

  private:
    friend class Lease;
    struct Entry {
        std::uint64_t serial = 0;  // unique per entry, never reused: what a Lease is tied to
        std::shared_ptr<Backend> backend;
        std::string host;
        std::uint16_t port = 0;
        int capacity = 0;
        int inflight = 0;
        int light_inflight = 0;
        bool available = false;
        std::uint64_t opened_by_earlier_processes = 0;  // keeps the counter monotonic
        double weight = 1;
        TimePoint down_until{};  // after a refused connection
        CircuitBreaker breaker;
    };
    struct Waiter {
        WakeSignal* signal = nullptr;  // its Place's: notified when served or at shutdown
        const TenantTicket* tenant = nullptr;
        std::set<std::string> avoid;
        std::uint64_t affinity_key = 0;
        std::shared_ptr<Backend> assigned;
        std::uint64_t assigned_serial = 0;
    };
    struct Picked {
        std::shared_ptr<Backend> backend;
        std::uint64_t serial = 0;
    };
    void release(const std::string& id, std::uint64_t serial, const std::string& tenant_id,
                 LeaseKind kind);
    Picked pick_light_locked(const std::set<std::string>& avoid);
    Picked pick_locked(const std::set<std::string>& avoid, std::uint64_t affinity_key);
    std::optional<std::size_t> choose_locked(const std::vector<Entry*>& candidates,
                                             const std::set<std::string>& avoid,
                                             std::uint64_t affinity_key);
    void dispatch_locked();
    // A lease now, a refusal now, or nullopt: the request must queue.
    std::optional<AcquireResult> admit_locked(const std::set<std::string>& avoid,
                                              std::uint64_t affinity_key,
                                              const TenantTicket& tenant);
    FairQueue::Ticket queue_locked(Waiter& waiter);
    // Hands free light connections to waiting light places, oldest first, and wakes the
    // blocking light waiters to look.
    void dispatch_light_locked();
    void count_light_waiter_locked();
    // A place's descriptor: a spare one when there is one.
    WakeSignal signal_locked();
    int inflight_total_locked() const;

    RandomSource& random_;
    const TimeSource& time_;
    RegistryOptions options_;
    std::size_t round_robin_next_ = 0;
    std::uint64_t next_serial_ = 1;
    // Spare place descriptors kept at most: more places than this at once are rare.
    static constexpr std::size_t kSpareSignals = 256;

    mutable std::mutex mutex_;
    std::map<std::string, Entry> entries_;
    FairQueue fair_{options_.priority_aging};
    std::map<FairQueue::Ticket, Waiter*> waiters_;  // exactly the tickets in fair_
    mutable std::condition_variable idle_cv_;       // a worker's last request ended
    std::size_t light_waiting_ = 0;
    std::list<Place*> light_places_;  // waiting light Places, oldest first
    // Descriptors of places gone, for the next ones: a new eventfd for each queued request,
    // and its close, were two system calls under this lock, and the server re-arms a
    // descriptor it knows with one MOD instead of an ADD. A recycled one may still hold a
    // wake-up (a place destroyed unserved after it was handed a slot): its next place then
    // wakes once for nothing, which take() (it clears first) tells.
    std::vector<WakeSignal> spare_signals_;
    bool shutdown_ = false;
    std::function<void(Activity)> activity_hook_;
    TimePoint last_active_ = time_.now();
};

}  // namespace llama_pool
