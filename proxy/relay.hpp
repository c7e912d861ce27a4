#pragma once

#include <functional>
#include <set>
#include <string>

#include "common/config.hpp"
#include "common/http_server.hpp"
#include "common/log.hpp"
#include "common/random.hpp"
#include "proxy/backend_registry.hpp"
#include "proxy/pool_metrics.hpp"
#include "proxy/relay_plan.hpp"
#include "proxy/relay_reasons.hpp"
#include "proxy/retry_budget.hpp"
#include "proxy/service_rate.hpp"
#include "proxy/tenant_identity.hpp"

namespace llama_pool {

// What happened to one relayed request, for the access log and metrics.
struct RelayOutcome {
    int status = 0;
    std::string group;  // the model group that served it; empty for the pool's own routes
    std::string worker;
    int attempts = 0;
    double queue_seconds = 0;
    std::string tenant;  // who it was queued as (a label: never a key)
    bool client_gone = false;
    bool upstream_broke = false;                 // the worker failed after the response had started
    RejectReason rejected = RejectReason::none;  // why the pool answered it itself
    std::vector<RetryReason> retry_reasons;      // one per retry
    RetryRefusal retry_refused = RetryRefusal::none;  // why no further retry
    double first_byte_seconds = -1;  // when the response head went out; -1 when it did not
    long long tokens_predicted = 0;  // generated tokens the reply reported (usage, timings)
    std::string cache;               // hit, miss, bypass; empty when the response cache had no say
    std::string idempotency;         // executed, attached, replayed, conflict; empty without a key
    // The body went on in the server's event loop: this outcome is not the final one, which
    // goes to the OutcomeSink when the body ends.
    bool handed_off = false;
};

// Receives the final outcome of a request whose body was handed to the server's event loop.
using OutcomeSink = std::function<void(const RelayOutcome&)>;

// Forwards one client request to a worker and the worker's response back, faithfully:
// status, end-to-end headers and body bytes as they come (SSE events pass one by one).
// Until the response head is forwarded, failures are retried on another worker; after it,
// never (a retried generation would corrupt what the client already has). The decisions are
// RelayPlan's (proxy/relay_plan.hpp); this class is the I/O around them.
class Relay {
  public:
    // `group`: the model group it serves, as its metric series are labelled ("" for the one
    // group of a pool without groups); also scopes the group's cached replies. Time is read
    // from the registry's TimeSource, so that the relay and its queue share one clock.
    Relay(const PoolConfig& config, BackendRegistry& registry, Logger& log, RandomSource& random,
          PoolMetrics& metrics, std::string group = {});

    // `avoid`: workers to use only when no other one has a free slot (a caller retrying
    // work that failed there).
    // `sink`: when set, the request may wait (Exchange::defer) and its streamed body go on
    // (Exchange::hand_off) without this thread; the returned outcome then says handed_off,
    // and `sink` gets the final one. Without it, this thread waits for every step.
    RelayOutcome forward(Exchange& exchange, const std::string& target,
                         const std::string& request_id, const std::set<std::string>& avoid = {},
                         const OutcomeSink& sink = {});

    const ServiceRate& service_rate() const { return service_rate_; }
    const std::string& group() const { return group_; }

  private:
    class Run;      // one forward(): proxy/relay.cpp
    class Waiting;  // a Run while the server's event loop holds its request
    friend class Run;
    friend class ReplyBody;
    friend class RelayPump;

    std::uint64_t affinity_key_for(const HttpRequest& request) const;

    const PoolConfig& config_;
    BackendRegistry& registry_;
    Logger& log_;
    RandomSource& random_;
    PoolMetrics& metrics_;
    const std::string group_;
    const TenantDirectory tenants_;
    const RelayRules rules_;
    RetryBudget budget_;
    ServiceRate service_rate_;
};

// The client's own deadline from `X-Request-Timeout: SECONDS`, when present and sane.
std::optional<Duration> client_deadline(const Headers& headers);

Headers upstream_request_headers(const HttpRequest& request, const std::string& request_id,
                                 const std::string& worker_key, const std::string& client_addr);
Headers client_response_headers(const Headers& upstream, const std::string& request_id);

}  // namespace llama_pool
