#include "proxy/fair_queue.hpp"

#include <algorithm>
#include <stdexcept>
#include <tuple>

namespace llama_pool {

FairQueue::TenantState& FairQueue::tenant_state(const TenantTicket& tenant) {
    auto& state = tenants_[tenant.id];
    // The policy and label of the latest request win: a reload may have changed them.
    state.label = tenant.label;
    state.policy = tenant.policy;
    return state;
}

std::pair<double, double> FairQueue::tag(TenantState& state) const {
    const double weight = state.policy.weight > 0 ? state.policy.weight : 1;
    const double start = std::max(virtual_time_, state.last_finish);
    const double finish = start + 1.0 / weight;
    state.last_finish = finish;
    return {start, finish};
}

FairQueue::Ticket FairQueue::push(const TenantTicket& tenant, TimePoint now) {
    auto& state = tenant_state(tenant);
    const auto [start, finish] = tag(state);
    ++state.waiting;
    const auto ticket = next_ticket_++;
    tickets_.emplace(ticket, Waiting{tenant.id, start, finish, tenant.policy.priority, now});
    return ticket;
}

void FairQueue::served(Ticket ticket) {
    const auto it = tickets_.find(ticket);
    if (it == tickets_.end()) {
        throw std::logic_error("FairQueue::served: unknown ticket");
    }
    virtual_time_ = std::max(virtual_time_, it->second.start);
    auto& state = tenants_.at(it->second.tenant_id);
    --state.waiting;
    ++state.running;
    tickets_.erase(it);
    settle();
}

void FairQueue::started_without_waiting(const TenantTicket& tenant) {
    auto& state = tenant_state(tenant);
    const auto [start, finish] = tag(state);
    (void)finish;
    virtual_time_ = std::max(virtual_time_, start);
    ++state.running;
    settle();
}

void FairQueue::withdraw(Ticket ticket) {
    const auto it = tickets_.find(ticket);
    if (it == tickets_.end()) {
        throw std::logic_error("FairQueue::withdraw: unknown ticket");
    }
    const auto id = it->second.tenant_id;
    auto& state = tenants_.at(id);
    --state.waiting;
    // The tenant's latest request gave up: give back its share, so that a client that
    // retries after a timeout is not pushed further back for requests that never ran.
    if (state.last_finish == it->second.finish) {
        state.last_finish = it->second.start;
    }
    tickets_.erase(it);
    forget_if_idle(id);
}

void FairQueue::finished(const std::string& tenant_id) {
    const auto it = tenants_.find(tenant_id);
    if (it == tenants_.end() || it->second.running <= 0) {
        throw std::logic_error("FairQueue::finished: tenant has nothing running");
    }
    --it->second.running;
    forget_if_idle(tenant_id);
}

void FairQueue::forget_if_idle(const std::string& tenant_id) {
    const auto it = tenants_.find(tenant_id);
    if (it != tenants_.end() && it->second.waiting == 0 && it->second.running == 0 &&
        it->second.last_finish <= virtual_time_) {
        tenants_.erase(it);
    }
    settle();
}

void FairQueue::settle() {
    const bool idle =
        tickets_.empty() && std::all_of(tenants_.begin(), tenants_.end(),
                                        [](const auto& kv) { return kv.second.running == 0; });
    if (idle) {
        // Nothing waits or runs, so nobody is owed anything: the virtual time catches up with
        // every tag handed out, as start-time fair queueing does when the server goes idle.
        for (const auto& [id, state] : tenants_) {
            virtual_time_ = std::max(virtual_time_, state.last_finish);
        }
    }
    if (!tickets_.empty() && tenants_.size() <= kRememberedTenants) {
        return;
    }
    // Bounded memory under a stream of distinct tenants (client addresses): an idle tenant
    // is forgotten, at worst losing the share it used ahead of the virtual time.
    std::erase_if(tenants_,
                  [](const auto& kv) { return kv.second.waiting == 0 && kv.second.running == 0; });
}

int FairQueue::effective_priority(const Waiting& w, TimePoint now) const {
    if (aging_ <= Duration::zero() || now <= w.enqueued) {
        return w.priority;
    }
    const auto steps = (now - w.enqueued) / aging_;
    return w.priority + static_cast<int>(std::min<decltype(steps)>(steps, 1'000'000));
}

bool FairQueue::under_cap(const std::string& tenant_id, const TenantPolicy& policy) const {
    if (policy.max_concurrency <= 0) {
        return true;
    }
    const auto it = tenants_.find(tenant_id);
    return it == tenants_.end() || it->second.running < policy.max_concurrency;
}

std::vector<FairQueue::Ticket> FairQueue::order(TimePoint now) const {
    struct Key {
        int priority;
        double start;
        Ticket ticket;
    };
    std::vector<Key> keys;
    keys.reserve(tickets_.size());
    for (const auto& [ticket, w] : tickets_) {
        const auto& state = tenants_.at(w.tenant_id);
        if (!under_cap(w.tenant_id, state.policy)) {
            continue;
        }
        keys.push_back({effective_priority(w, now), w.start, ticket});
    }
    std::sort(keys.begin(), keys.end(), [](const Key& a, const Key& b) {
        // Higher class first; then the earlier start tag; then the earlier arrival.
        return std::tie(b.priority, a.start, a.ticket) < std::tie(a.priority, b.start, b.ticket);
    });
    std::vector<Ticket> out;
    out.reserve(keys.size());
    for (const auto& k : keys) {
        out.push_back(k.ticket);
    }
    return out;
}

std::size_t FairQueue::ahead_of(const TenantTicket& tenant, TimePoint now) const {
    double last_finish = 0;
    if (const auto it = tenants_.find(tenant.id); it != tenants_.end()) {
        last_finish = it->second.last_finish;
    }
    const double start = std::max(virtual_time_, last_finish);
    const int priority = tenant.policy.priority;
    std::size_t ahead = 0;
    for (const auto& [ticket, w] : tickets_) {
        const int p = effective_priority(w, now);
        if (p > priority || (p == priority && w.start <= start)) {
            ++ahead;
        }
    }
    return ahead;
}

std::vector<FairQueue::TenantStats> FairQueue::stats(TimePoint now) const {
    std::map<std::string, TenantStats> by_label;
    for (const auto& [id, state] : tenants_) {
        if (state.waiting == 0 && state.running == 0) {
            continue;
        }
        auto& s = by_label[state.label];
        s.label = state.label;
        s.waiting += state.waiting;
        s.running += state.running;
    }
    for (const auto& [ticket, w] : tickets_) {
        auto& s = by_label[tenants_.at(w.tenant_id).label];
        s.oldest_wait = std::max(s.oldest_wait, now - w.enqueued);
    }
    std::vector<TenantStats> out;
    for (auto& [label, s] : by_label) {
        out.push_back(std::move(s));
    }
    return out;
}

}  // namespace llama_pool
