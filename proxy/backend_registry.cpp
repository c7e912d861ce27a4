#include "proxy/backend_registry.hpp"

#include <algorithm>

#include "proxy/affinity.hpp"
#include "proxy/balancer.hpp"

namespace llama_pool {

namespace {
// How often a queued request checks whether its client is still there.
}  // namespace

BalancerPolicy parse_balancer_policy(std::string_view name) {
    if (name == "round-robin") {
        return BalancerPolicy::round_robin;
    }
    if (name == "prefix-affinity") {
        return BalancerPolicy::prefix_affinity;
    }
    return BalancerPolicy::least_loaded;
}

Lease::~Lease() {
    if (registry_ != nullptr && backend_) {
        registry_->release(backend_->id, entry_serial_, tenant_id_, kind_);
    }
}

std::optional<BackendRegistry::AcquireResult> BackendRegistry::admit_locked(
    const std::set<std::string>& avoid, std::uint64_t affinity_key, const TenantTicket& tenant) {
    AcquireResult result;
    if (shutdown_) {
        result.status = AcquireStatus::shutdown;
        return result;
    }
    last_active_ = time_.now();
    // Only jump the queue when nobody is waiting: the fair order is for the waiters.
    if (fair_.empty() && fair_.under_cap(tenant.id, tenant.policy)) {
        if (auto picked = pick_locked(avoid, affinity_key); picked.backend) {
            fair_.started_without_waiting(tenant);
            result.status = AcquireStatus::ok;
            result.lease.emplace(this, std::move(picked.backend), picked.serial, tenant.id);
            return result;
        }
    }
    if (fair_.size() >= options_.queue_max) {
        result.status = AcquireStatus::queue_full;
        return result;
    }
    return std::nullopt;
}

FairQueue::Ticket BackendRegistry::queue_locked(Waiter& waiter) {
    const auto ticket = fair_.push(*waiter.tenant, time_.now());
    waiters_.emplace(ticket, &waiter);
    if (activity_hook_) {
        activity_hook_(Activity::waiting);
    }
    // A slot may be free for this tenant while others wait (theirs are capped, or need
    // another worker).
    dispatch_locked();
    return ticket;
}

void BackendRegistry::count_light_waiter_locked() {
    // Counted as waiting, so that a group scaled to zero starts a worker for it. The scaler
    // needs the poke only when the first one starts waiting: it counts the others itself.
    if (light_waiting_++ == 0 && activity_hook_) {
        activity_hook_(Activity::waiting);
    }
}

void BackendRegistry::dispatch_light_locked() {
    while (!light_places_.empty()) {
        auto* place = light_places_.front();
        auto picked = pick_light_locked(place->light_avoid_);
        if (!picked.backend) {
            break;  // nothing free for the oldest: a connection that frees up goes to it
        }
        light_places_.pop_front();
        place->light_waiting_ = false;
        --light_waiting_;
        place->light_backend_ = std::move(picked.backend);
        place->light_serial_ = picked.serial;
        place->signal_.notify();
    }
}

BackendRegistry::AcquireResult BackendRegistry::try_acquire(const std::set<std::string>& avoid,
                                                            std::uint64_t affinity_key,
                                                            const TenantTicket& tenant,
                                                            std::unique_ptr<Place>& place) {
    std::lock_guard lock(mutex_);
    if (auto now = admit_locked(avoid, affinity_key, tenant)) {
        return std::move(*now);
    }
    auto queued = std::make_unique<Place>(Place::Key{}, *this, LeaseKind::slot, signal_locked());
    queued->waiter_ = std::make_unique<Waiter>();
    queued->waiter_->signal = &queued->signal_;
    queued->waiter_->tenant = &tenant;
    queued->waiter_->avoid = avoid;
    queued->waiter_->affinity_key = affinity_key;
    queued->ticket_ = queue_locked(*queued->waiter_);
    place = std::move(queued);
    return {AcquireStatus::timeout, std::nullopt};
}

BackendRegistry::AcquireResult BackendRegistry::try_acquire_light(
    const std::set<std::string>& avoid, std::unique_ptr<Place>& place) {
    std::lock_guard lock(mutex_);
    AcquireResult result;
    if (shutdown_) {
        result.status = AcquireStatus::shutdown;
        return result;
    }
    last_active_ = time_.now();
    if (auto picked = pick_light_locked(avoid); picked.backend) {
        result.status = AcquireStatus::ok;
        result.lease.emplace(this, std::move(picked.backend), picked.serial, std::string(),
                             LeaseKind::light);
        return result;
    }
    auto queued = std::make_unique<Place>(Place::Key{}, *this, LeaseKind::light, signal_locked());
    queued->light_avoid_ = avoid;
    queued->light_waiting_ = true;
    queued->light_entry_ = light_places_.insert(light_places_.end(), queued.get());
    count_light_waiter_locked();
    place = std::move(queued);
    return result;
}

WakeSignal BackendRegistry::signal_locked() {
    if (spare_signals_.empty()) {
        return WakeSignal();
    }
    auto signal = std::move(spare_signals_.back());
    spare_signals_.pop_back();
    return signal;
}

std::optional<BackendRegistry::AcquireResult> BackendRegistry::Place::take() {
    // Cleared before the state is read, and outside the lock: a wake-up after this is either
    // seen below or left readable for the next take(), never lost.
    signal_.clear();
    std::lock_guard lock(registry_.mutex_);
    AcquireResult result;
    if (kind_ == LeaseKind::light) {
        if (light_backend_) {
            result.status = AcquireStatus::ok;
            result.lease.emplace(&registry_, std::move(light_backend_), light_serial_,
                                 std::string(), LeaseKind::light);
            return result;
        }
        if (!light_waiting_ || !registry_.shutdown_) {
            return std::nullopt;
        }
        light_waiting_ = false;
        registry_.light_places_.erase(light_entry_);
        --registry_.light_waiting_;
        result.status = AcquireStatus::shutdown;
        return result;
    }
    if (!waiter_) {
        return std::nullopt;  // already served
    }
    if (waiter_->assigned) {
        // The fair queue took the ticket back when it served it.
        result.status = AcquireStatus::ok;
        result.lease.emplace(&registry_, std::move(waiter_->assigned), waiter_->assigned_serial,
                             waiter_->tenant->id);
        waiter_.reset();
        return result;
    }
    if (!registry_.shutdown_) {
        return std::nullopt;
    }
    registry_.waiters_.erase(ticket_);
    registry_.fair_.withdraw(ticket_);
    waiter_.reset();
    result.status = AcquireStatus::shutdown;
    return result;
}

BackendRegistry::Place::~Place() {
    std::shared_ptr<Backend> unclaimed;
    std::uint64_t serial = 0;
    std::string tenant_id;
    {
        std::lock_guard lock(registry_.mutex_);
        if (light_waiting_) {
            registry_.light_places_.erase(light_entry_);
            --registry_.light_waiting_;
        }
        if (light_backend_) {
            unclaimed = std::move(light_backend_);
            serial = light_serial_;
        } else if (waiter_ && waiter_->assigned) {
            unclaimed = std::move(waiter_->assigned);
            serial = waiter_->assigned_serial;
            tenant_id = waiter_->tenant->id;
        } else if (waiter_) {
            registry_.waiters_.erase(ticket_);
            registry_.fair_.withdraw(ticket_);
            // Our place may have been the one blocking others with different avoid sets.
            registry_.dispatch_locked();
        }
        // Nothing refers to the descriptor any more (the registry's queues are left).
        if (registry_.spare_signals_.size() < kSpareSignals) {
            registry_.spare_signals_.push_back(std::move(signal_));
        }
    }
    if (unclaimed) {
        // Handed a slot (or a light connection) it never took: giving it back, outside the
        // lock, passes it on.
        const Lease given_back(&registry_, std::move(unclaimed), serial, std::move(tenant_id),
                               kind_);
    }
}

BackendRegistry::Picked BackendRegistry::pick_light_locked(const std::set<std::string>& avoid) {
    const auto now = time_.now();
    Entry* best = nullptr;
    bool best_untried = false;
    for (auto& [id, e] : entries_) {
        if (!e.available || e.light_inflight >= options_.light_per_worker ||
            e.breaker.state(now) == BreakerState::open || now < e.down_until) {
            continue;
        }
        // Least loaded among those not tried yet, then among the others.
        const bool untried = avoid.count(id) == 0;
        const auto load = std::pair(e.light_inflight, e.inflight);
        if (best == nullptr || (untried && !best_untried) ||
            (untried == best_untried && load < std::pair(best->light_inflight, best->inflight))) {
            best = &e;
            best_untried = untried;
        }
    }
    if (best == nullptr) {
        return {};
    }
    ++best->light_inflight;
    return {best->backend, best->serial};
}

std::optional<std::size_t> BackendRegistry::choose_locked(const std::vector<Entry*>& candidates,
                                                          const std::set<std::string>& avoid,
                                                          std::uint64_t affinity_key) {
    std::vector<BackendLoad> loads;
    for (const auto* e : candidates) {
        loads.push_back({e->inflight, e->capacity, avoid.count(e->backend->id) > 0, e->weight});
    }
    const auto has_room = [&](std::size_t i) { return loads[i].inflight < loads[i].capacity; };
    switch (options_.policy) {
        case BalancerPolicy::round_robin: {
            for (const bool allow_avoided : {false, true}) {
                for (std::size_t step = 0; step < candidates.size(); ++step) {
                    const auto i = (round_robin_next_ + step) % candidates.size();
                    if (has_room(i) && (allow_avoided || !loads[i].avoid)) {
                        round_robin_next_ = i + 1;
                        return i;
                    }
                }
            }
            return std::nullopt;
        }
        case BalancerPolicy::prefix_affinity: {
            if (affinity_key != 0) {
                std::vector<std::string> ids;
                for (const auto* e : candidates) {
                    ids.push_back(e->backend->id);
                }
                // The preferred worker when it has room; else spill to the least loaded, so
                // one hot prefix cannot queue behind a single worker while others idle.
                const auto order = rendezvous_order(affinity_key, ids);
                if (!order.empty() && has_room(order.front()) && !loads[order.front()].avoid) {
                    return order.front();
                }
            }
            return choose_least_loaded(loads, random_);
        }
        case BalancerPolicy::least_loaded:
            break;
    }
    return choose_least_loaded(loads, random_);
}

BackendRegistry::Picked BackendRegistry::pick_locked(const std::set<std::string>& avoid,
                                                     std::uint64_t affinity_key) {
    const auto now = time_.now();
    std::vector<Entry*> admitted;
    std::vector<Entry*> ejected;
    for (auto& [id, e] : entries_) {
        if (!e.available) {
            continue;
        }
        const bool out = e.breaker.state(now) == BreakerState::open || now < e.down_until;
        (out ? ejected : admitted).push_back(&e);
    }
    // A retry waits for a slot on a worker it has not tried rather than go back to one that
    // just failed it: a dead worker always has free slots, because its requests fail fast.
    const auto untried = [&](const Entry* e) { return avoid.count(e->backend->id) == 0; };
    if (std::any_of(admitted.begin(), admitted.end(), untried)) {
        std::erase_if(admitted, [&](const Entry* e) { return !untried(e); });
    }
    while (!admitted.empty()) {
        const auto choice = choose_locked(admitted, avoid, affinity_key);
        if (!choice) {
            return {};  // the admitted ones are full: wait for a slot
        }
        auto* e = admitted[*choice];
        if (e->breaker.try_acquire(now)) {
            ++e->inflight;
            return {e->backend, e->serial};
        }
        // Half-open with its trial slots taken: not a candidate for now.
        admitted.erase(admitted.begin() + static_cast<std::ptrdiff_t>(*choice));
    }
    if (ejected.empty()) {
        return {};
    }
    // Every available worker is ejected: try the least bad (the one due back first) rather
    // than refusing everyone.
    Entry* best = nullptr;
    for (auto* e : ejected) {
        if (e->inflight < e->capacity &&
            (best == nullptr || e->breaker.reopens_at() < best->breaker.reopens_at())) {
            best = e;
        }
    }
    if (best == nullptr) {
        return {};
    }
    ++best->inflight;
    return {best->backend, best->serial};
}

void BackendRegistry::report_refused(const std::string& id) {
    std::lock_guard lock(mutex_);
    if (const auto it = entries_.find(id); it != entries_.end()) {
        it->second.down_until = time_.now() + seconds(1);
    }
}

int BackendRegistry::total_capacity() const {
    std::lock_guard lock(mutex_);
    int total = 0;
    for (const auto& [id, e] : entries_) {
        if (e.available) {
            total += e.capacity;
        }
    }
    return total;
}

int BackendRegistry::configured_capacity() const {
    std::lock_guard lock(mutex_);
    int total = 0;
    for (const auto& [id, e] : entries_) {
        total += e.capacity;
    }
    return total;
}

BackendRegistry::BreakerChange BackendRegistry::report(const std::string& id, bool success) {
    std::lock_guard lock(mutex_);
    BreakerChange change;
    const auto it = entries_.find(id);
    if (it == entries_.end()) {
        return change;
    }
    const auto now = time_.now();
    auto& breaker = it->second.breaker;
    change.before = breaker.state(now);
    if (success) {
        breaker.on_success(now);
    } else {
        breaker.on_failure(now);
    }
    change.after = breaker.state(now);
    if (change.after != BreakerState::open) {
        dispatch_locked();
    }
    return change;
}

void BackendRegistry::report_abandoned(const std::string& id) {
    std::lock_guard lock(mutex_);
    if (const auto it = entries_.find(id); it != entries_.end()) {
        it->second.breaker.on_abandoned(time_.now());
        dispatch_locked();
    }
}

void BackendRegistry::dispatch_locked() {
    for (const auto ticket : fair_.order(time_.now())) {
        auto* waiter = waiters_.at(ticket);
        // The order was taken before this loop handed out slots: a tenant may have reached
        // its cap since.
        if (!fair_.under_cap(waiter->tenant->id, waiter->tenant->policy)) {
            continue;
        }
        auto picked = pick_locked(waiter->avoid, waiter->affinity_key);
        if (!picked.backend) {
            break;  // no free slot anywhere: later waiters cannot be served either
        }
        waiter->assigned = std::move(picked.backend);
        waiter->assigned_serial = picked.serial;
        waiters_.erase(ticket);
        fair_.served(ticket);
        waiter->signal->notify();
    }
}

void BackendRegistry::release(const std::string& id, std::uint64_t serial,
                              const std::string& tenant_id, LeaseKind kind) {
    std::lock_guard lock(mutex_);
    // A lease taken on an entry that has since been removed (and maybe added again under the
    // same id) counts on nothing any more.
    auto it = entries_.find(id);
    const bool counted = it != entries_.end() && it->second.serial == serial;
    last_active_ = time_.now();
    if (counted && it->second.inflight + it->second.light_inflight == 1) {
        idle_cv_.notify_all();  // this was its last request: a drain may go on
    }
    if (kind == LeaseKind::light) {
        if (counted && it->second.light_inflight > 0) {
            --it->second.light_inflight;
        }
        dispatch_light_locked();  // few, and each may avoid different workers
    } else {
        if (counted && it->second.inflight > 0) {
            --it->second.inflight;
        }
        fair_.finished(tenant_id);
        dispatch_locked();
    }
    if (activity_hook_ && inflight_total_locked() == 0) {
        activity_hook_(Activity::idle);
    }
}

int BackendRegistry::inflight_total_locked() const {
    int total = 0;
    for (const auto& [id, e] : entries_) {
        total += e.inflight + e.light_inflight;
    }
    return total;
}

int BackendRegistry::inflight_total() const {
    std::lock_guard lock(mutex_);
    return inflight_total_locked();
}

TimePoint BackendRegistry::last_active() const {
    std::lock_guard lock(mutex_);
    return last_active_;
}

void BackendRegistry::worker_ready(const WorkerEndpoint& endpoint) {
    std::lock_guard lock(mutex_);
    auto& e = entries_[endpoint.id];
    if (e.serial == 0) {
        e.serial = next_serial_++;  // a new entry, maybe under the id of a removed one
    }
    const bool same = e.backend && e.host == endpoint.host && e.port == endpoint.port &&
                      e.backend->api_key == endpoint.api_key;
    if (!same) {
        // A new process (new port): fresh connection pool; in-flight leases keep the old one.
        if (e.backend) {
            e.opened_by_earlier_processes += e.backend->pool.connections_opened();
        }
        e.backend = std::make_shared<Backend>(
            endpoint, static_cast<std::size_t>(endpoint.capacity) +
                          static_cast<std::size_t>(options_.light_per_worker));
        e.host = endpoint.host;
        e.port = endpoint.port;
        e.breaker = CircuitBreaker(options_.breaker);  // a new process starts with a clean record
    }
    e.capacity = endpoint.capacity;
    e.weight = endpoint.weight;
    e.down_until = {};
    e.available = true;
    dispatch_locked();
    dispatch_light_locked();
}

void BackendRegistry::worker_unavailable(const std::string& id) {
    std::lock_guard lock(mutex_);
    if (auto it = entries_.find(id); it != entries_.end()) {
        it->second.available = false;
    }
}

void BackendRegistry::worker_removed(const std::string& id) {
    std::lock_guard lock(mutex_);
    // Leases on it hold the Backend itself; their release finds no entry and is a no-op.
    entries_.erase(id);
    idle_cv_.notify_all();
}

std::uint64_t BackendRegistry::worker_progress(const std::string& id) const {
    std::lock_guard lock(mutex_);
    const auto it = entries_.find(id);
    return it == entries_.end() || !it->second.backend
               ? 0
               : it->second.backend->received.load(std::memory_order_relaxed);
}

void BackendRegistry::wait_idle(const std::string& id, Duration timeout,
                                const std::atomic<bool>& hurried) const {
    std::unique_lock lock(mutex_);
    idle_cv_.wait_for(lock, timeout, [&] {
        const auto it = entries_.find(id);
        return hurried.load() || shutdown_ || it == entries_.end() ||
               it->second.inflight + it->second.light_inflight == 0;
    });
}

void BackendRegistry::wake_idle_waiters() {
    std::lock_guard lock(mutex_);  // a waiter between its check and its wait sees it too
    idle_cv_.notify_all();
}

int BackendRegistry::worker_inflight(const std::string& id) const {
    std::lock_guard lock(mutex_);
    const auto it = entries_.find(id);
    return it == entries_.end() ? 0 : it->second.inflight + it->second.light_inflight;
}

void BackendRegistry::shutdown() {
    std::lock_guard lock(mutex_);
    shutdown_ = true;
    for (auto& [ticket, w] : waiters_) {
        w->signal->notify();
    }
    dispatch_light_locked();
    for (auto* place : light_places_) {
        place->signal_.notify();  // take() says shutdown
    }
    idle_cv_.notify_all();
}

std::vector<BackendSnapshot> BackendRegistry::snapshot() {
    std::lock_guard lock(mutex_);
    std::vector<BackendSnapshot> out;
    for (auto& [id, e] : entries_) {
        out.push_back(
            {id, e.host, e.port, e.available, e.capacity, e.inflight,
             e.opened_by_earlier_processes + (e.backend ? e.backend->pool.connections_opened() : 0),
             e.backend ? e.backend->api_key : std::string(), e.breaker.state(time_.now()),
             e.breaker.ejections()});
    }
    return out;
}

std::size_t BackendRegistry::waiting() const {
    std::lock_guard lock(mutex_);
    return fair_.size() + light_waiting_;
}

std::size_t BackendRegistry::waiting_ahead_of(const TenantTicket& tenant) const {
    std::lock_guard lock(mutex_);
    return fair_.ahead_of(tenant, time_.now());
}

std::vector<FairQueue::TenantStats> BackendRegistry::queue_by_tenant() const {
    std::lock_guard lock(mutex_);
    return fair_.stats(time_.now());
}

int BackendRegistry::available_count() const {
    std::lock_guard lock(mutex_);
    return static_cast<int>(std::count_if(entries_.begin(), entries_.end(),
                                          [](const auto& kv) { return kv.second.available; }));
}

}  // namespace llama_pool
