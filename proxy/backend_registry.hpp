#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/clock.hpp"
#include "common/random.hpp"
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
};

class BackendRegistry;

// The right to send one request to one backend. Releases its slot when destroyed, which
// hands the slot to the oldest waiting request.
class Lease {
  public:
    Lease(BackendRegistry* registry, std::shared_ptr<Backend> backend)
        : registry_(registry), backend_(std::move(backend)) {}
    Lease(Lease&& other) noexcept
        : registry_(std::exchange(other.registry_, nullptr)), backend_(std::move(other.backend_)) {}
    Lease& operator=(Lease&&) = delete;
    Lease(const Lease&) = delete;
    ~Lease();

    Backend& backend() const { return *backend_; }

  private:
    BackendRegistry* registry_;
    std::shared_ptr<Backend> backend_;
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
};

// Which backends can take traffic now and how much. Admission is FIFO: a request waits in
// the pool's own queue (not in a worker's unbounded one) and the first slot to free up
// goes to the oldest waiter. Thread-safe.
class BackendRegistry final : public WorkerListener {
  public:
    enum class AcquireStatus { ok, timeout, cancelled, shutdown };
    struct AcquireResult {
        AcquireStatus status = AcquireStatus::timeout;
        std::optional<Lease> lease;
    };

    explicit BackendRegistry(RandomSource& random) : random_(random) {}

    // Waits until a backend has a free slot, `deadline` passes, `cancelled()` turns true (the
    // client left; checked every few milliseconds) or the registry shuts down. Backends in
    // `avoid` are used only when no other one has a free slot.
    AcquireResult acquire(TimePoint deadline, const std::set<std::string>& avoid,
                          const std::function<bool()>& cancelled);

    void worker_ready(const WorkerEndpoint& endpoint) override;
    void worker_unavailable(const std::string& id) override;
    int worker_inflight(const std::string& id) const override;

    void shutdown();
    std::vector<BackendSnapshot> snapshot() const;
    std::size_t waiting() const;
    int available_count() const;

  private:
    friend class Lease;
    struct Entry {
        std::shared_ptr<Backend> backend;
        std::string host;
        std::uint16_t port = 0;
        int capacity = 0;
        int inflight = 0;
        bool available = false;
        std::uint64_t opened_by_earlier_processes = 0;  // keeps the counter monotonic
    };
    struct Waiter {
        std::condition_variable cv;
        std::set<std::string> avoid;
        std::shared_ptr<Backend> assigned;
    };
    void release(const std::string& id);
    std::shared_ptr<Backend> pick_locked(const std::set<std::string>& avoid);
    void dispatch_locked();

    RandomSource& random_;
    mutable std::mutex mutex_;
    std::map<std::string, Entry> entries_;
    std::deque<Waiter*> waiters_;
    bool shutdown_ = false;
};

}  // namespace llama_pool
