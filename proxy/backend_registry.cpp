#include "proxy/backend_registry.hpp"

#include <algorithm>

#include "proxy/balancer.hpp"

namespace llama_pool {

namespace {
// How often a queued request checks whether its client is still there.
constexpr auto kCancelCheck = milliseconds(20);
}  // namespace

Lease::~Lease() {
    if (registry_ != nullptr && backend_) {
        registry_->release(backend_->id);
    }
}

BackendRegistry::AcquireResult BackendRegistry::acquire(TimePoint deadline,
                                                        const std::set<std::string>& avoid,
                                                        const std::function<bool()>& cancelled) {
    std::unique_lock lock(mutex_);
    AcquireResult result;
    if (shutdown_) {
        result.status = AcquireStatus::shutdown;
        return result;
    }
    // Only jump the queue when nobody is waiting: FIFO fairness for the waiters.
    if (waiters_.empty()) {
        if (auto backend = pick_locked(avoid)) {
            result.status = AcquireStatus::ok;
            result.lease.emplace(this, std::move(backend));
            return result;
        }
    }
    Waiter waiter;
    waiter.avoid = avoid;
    waiters_.push_back(&waiter);
    while (!waiter.assigned && !shutdown_) {
        const auto now = Clock::now();
        if (now >= deadline) {
            result.status = AcquireStatus::timeout;
            break;
        }
        waiter.cv.wait_until(lock, std::min(deadline, now + kCancelCheck));
        if (!waiter.assigned && cancelled && cancelled()) {
            result.status = AcquireStatus::cancelled;
            break;
        }
    }
    std::erase(waiters_, &waiter);
    if (waiter.assigned) {
        // Assigned at the last moment: the slot is ours even if time just ran out.
        result.status = AcquireStatus::ok;
        result.lease.emplace(this, std::move(waiter.assigned));
        return result;
    }
    if (shutdown_) {
        result.status = AcquireStatus::shutdown;
    }
    // Our place may have been the one blocking others with different avoid sets.
    dispatch_locked();
    return result;
}

std::shared_ptr<Backend> BackendRegistry::pick_locked(const std::set<std::string>& avoid) {
    std::vector<BackendLoad> loads;
    std::vector<Entry*> candidates;
    for (auto& [id, e] : entries_) {
        if (!e.available) {
            continue;
        }
        loads.push_back({e.inflight, e.capacity, avoid.count(id) > 0});
        candidates.push_back(&e);
    }
    const auto choice = choose_least_loaded(loads, random_);
    if (!choice) {
        return nullptr;
    }
    auto* e = candidates[*choice];
    ++e->inflight;
    return e->backend;
}

void BackendRegistry::dispatch_locked() {
    for (auto* waiter : waiters_) {
        if (waiter->assigned) {
            continue;
        }
        auto backend = pick_locked(waiter->avoid);
        if (!backend) {
            break;  // no free slot anywhere: later waiters cannot be served either
        }
        waiter->assigned = std::move(backend);
        waiter->cv.notify_one();
    }
}

void BackendRegistry::release(const std::string& id) {
    std::lock_guard lock(mutex_);
    if (auto it = entries_.find(id); it != entries_.end() && it->second.inflight > 0) {
        --it->second.inflight;
    }
    dispatch_locked();
}

void BackendRegistry::worker_ready(const WorkerEndpoint& endpoint) {
    std::lock_guard lock(mutex_);
    auto& e = entries_[endpoint.id];
    const bool same = e.backend && e.host == endpoint.host && e.port == endpoint.port &&
                      e.backend->api_key == endpoint.api_key;
    if (!same) {
        // A new process (new port): fresh connection pool; in-flight leases keep the old one.
        if (e.backend) {
            e.opened_by_earlier_processes += e.backend->pool.connections_opened();
        }
        e.backend =
            std::make_shared<Backend>(endpoint, static_cast<std::size_t>(endpoint.capacity) + 1);
        e.host = endpoint.host;
        e.port = endpoint.port;
    }
    e.capacity = endpoint.capacity;
    e.available = true;
    dispatch_locked();
}

void BackendRegistry::worker_unavailable(const std::string& id) {
    std::lock_guard lock(mutex_);
    if (auto it = entries_.find(id); it != entries_.end()) {
        it->second.available = false;
    }
}

int BackendRegistry::worker_inflight(const std::string& id) const {
    std::lock_guard lock(mutex_);
    const auto it = entries_.find(id);
    return it == entries_.end() ? 0 : it->second.inflight;
}

void BackendRegistry::shutdown() {
    std::lock_guard lock(mutex_);
    shutdown_ = true;
    for (auto* w : waiters_) {
        w->cv.notify_one();
    }
}

std::vector<BackendSnapshot> BackendRegistry::snapshot() const {
    std::lock_guard lock(mutex_);
    std::vector<BackendSnapshot> out;
    for (const auto& [id, e] : entries_) {
        out.push_back(
            {id, e.host, e.port, e.available, e.capacity, e.inflight,
             e.opened_by_earlier_processes + (e.backend ? e.backend->pool.connections_opened() : 0),
             e.backend ? e.backend->api_key : std::string()});
    }
    return out;
}

std::size_t BackendRegistry::waiting() const {
    std::lock_guard lock(mutex_);
    return waiters_.size();
}

int BackendRegistry::available_count() const {
    std::lock_guard lock(mutex_);
    return static_cast<int>(std::count_if(entries_.begin(), entries_.end(),
                                          [](const auto& kv) { return kv.second.available; }));
}

}  // namespace llama_pool
