#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/clock.hpp"

namespace llama_pool {

// How one tenant shares the pool: `weight` is its share of slots among tenants that wait at
// the same priority, `priority` a class served before lower ones, `max_concurrency` the most
// requests it may have on workers at once (0: no cap).
struct TenantPolicy {
    double weight = 1;
    int priority = 0;
    int max_concurrency = 0;
    bool operator==(const TenantPolicy&) const = default;
};

// Who a request belongs to, as the admission queue sees it. `id` is internal (it may be
// derived from an API key and is never shown); `label` is what /pool/queue and metrics show.
struct TenantTicket {
    std::string id;
    std::string label;
    TenantPolicy policy;
};

// The order in which waiting requests get worker slots: start-time fair queueing over
// tenants. Each request gets a virtual start tag, max(the queue's virtual time, its
// tenant's previous finish tag), and a finish tag 1/weight later; waiters are served by
// priority class first, then by start tag, then by arrival. A tenant that floods the queue
// pushes its own tags ahead, so a newcomer's first request starts at the current virtual
// time and is served next: it waits about one request's time, not the whole flood.
//
// Priority classes are strict, with ageing so that nothing starves: a waiter's class rises
// by one for every `priority_aging` it has waited (0: no ageing).
//
// Pure bookkeeping: no locks, no clock of its own (time is passed in), no I/O. The caller
// (BackendRegistry) serialises access and decides who can actually take a slot.
class FairQueue {
  public:
    using Ticket = std::uint64_t;

    explicit FairQueue(Duration priority_aging = seconds(30)) : aging_(priority_aging) {}

    // A request starts waiting. Returns its ticket.
    Ticket push(const TenantTicket& tenant, TimePoint now);
    // A waiting request got a slot: advances the virtual time, counts it running.
    void served(Ticket ticket);
    // A request got a slot without waiting (nobody waited): tags it as if it had queued, so
    // that a tenant that keeps the pool busy still pays for it when others arrive.
    void started_without_waiting(const TenantTicket& tenant);
    // A waiting request left without a slot (timeout, client gone, shutdown).
    void withdraw(Ticket ticket);
    // A request that held a slot (served or started without waiting) finished.
    void finished(const std::string& tenant_id);

    // Waiting tickets in the order they should be offered a slot now; tickets of tenants at
    // their concurrency cap are left out.
    std::vector<Ticket> order(TimePoint now) const;
    // Whether the tenant is below its concurrency cap.
    bool under_cap(const std::string& tenant_id, const TenantPolicy& policy) const;
    // How many waiters would be served before a request of `tenant` that arrived now.
    std::size_t ahead_of(const TenantTicket& tenant, TimePoint now) const;

    std::size_t size() const { return tickets_.size(); }
    bool empty() const { return tickets_.empty(); }

    struct TenantStats {
        std::string label;
        std::size_t waiting = 0;
        int running = 0;
        Duration oldest_wait{};
    };
    // Tenants with requests waiting or running, by label.
    std::vector<TenantStats> stats(TimePoint now) const;

  private:
    struct Waiting {
        std::string tenant_id;
        double start = 0;
        double finish = 0;
        int priority = 0;
        TimePoint enqueued{};
    };
    struct TenantState {
        std::string label;
        TenantPolicy policy;
        double last_finish = 0;
        std::size_t waiting = 0;
        int running = 0;
    };
    TenantState& tenant_state(const TenantTicket& tenant);
    // Start and finish tags of the tenant's next request; updates its last finish tag.
    std::pair<double, double> tag(TenantState& state) const;
    int effective_priority(const Waiting& w, TimePoint now) const;
    // Forgets a tenant with nothing waiting or running whose tags are behind the virtual
    // time: it would get the same tags as a stranger. Keeps the map bounded.
    void forget_if_idle(const std::string& tenant_id);
    // When nobody waits, or too many tenants are remembered: catch the virtual time up and
    // forget idle tenants.
    void settle();

    static constexpr std::size_t kRememberedTenants = 1024;

    Duration aging_;
    double virtual_time_ = 0;
    Ticket next_ticket_ = 1;
    std::map<Ticket, Waiting> tickets_;  // by ticket, i.e. by arrival
    std::map<std::string, TenantState> tenants_;
};

}  // namespace llama_pool
