#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <thread>

#include "common/clock.hpp"

namespace llama_pool {

struct WorkerEndpoint {
    std::string id;
    std::string host;
    std::uint16_t port = 0;
    int capacity = 1;     // concurrent requests it can serve: its slot count
    std::string api_key;  // what the pool must send it; empty when none
    double weight = 1;    // relative share of traffic (upstreams' ?weight=N)
};

// How the supervisor tells the data plane which workers may take traffic. Implemented by
// the proxy's backend registry; the supervisor does not know the proxy. Called from worker
// owner threads; implementations must be thread-safe.
class WorkerListener {
  public:
    virtual ~WorkerListener() = default;
    // The worker may now take up to `capacity` concurrent requests.
    virtual void worker_ready(const WorkerEndpoint& endpoint) = 0;
    // No new requests for this worker; those in flight go on.
    virtual void worker_unavailable(const std::string& id) = 0;
    // Requests in flight on this worker (for draining and for idle probes).
    virtual int worker_inflight(const std::string& id) const = 0;
    // Waits until the worker has no request in flight, `timeout` passes or `hurried` turns
    // true (wake_idle_waiters() makes every waiter look again): a drain. The backend registry
    // wakes it when the worker's last request ends; this default, for listeners that cannot
    // tell (test doubles), looks every 20 ms.
    virtual void wait_idle(const std::string& id, Duration timeout,
                           const std::atomic<bool>& hurried) const {
        const auto until = Clock::now() + timeout;
        while (!hurried && worker_inflight(id) > 0 && Clock::now() < until) {
            std::this_thread::sleep_for(milliseconds(20));
        }
    }
    virtual void wake_idle_waiters() {}
    // A number that grows while the worker's requests make progress (response bytes read
    // from it), for the stall watchdog. 0 when the listener does not relay.
    virtual std::uint64_t worker_progress(const std::string& /*id*/) const { return 0; }
    // The worker is gone for good (a discovered address vanished): forget it. Requests still
    // running on it finish normally.
    virtual void worker_removed(const std::string& id) = 0;
};

}  // namespace llama_pool
