#pragma once

#include <functional>
#include <memory>
#include <string>

#include "common/clock.hpp"
#include "common/config.hpp"
#include "common/exchange.hpp"
#include "common/log.hpp"
#include "proxy/coalescer.hpp"
#include "proxy/pool_metrics.hpp"
#include "proxy/relay.hpp"
#include "proxy/request_traits.hpp"
#include "proxy/response_cache.hpp"

namespace llama_pool {

// Replies reused instead of generated again, in front of the relay: the response cache
// (deterministic non-stream requests; off unless cache.enabled) and Idempotency-Key
// coalescing (on unless cache.idempotency_window is 0). A request neither applies to goes
// straight to the relay. Thread-safe.
//
// A request that leads an Idempotency-Key runs to completion even when its client leaves
// (bounded by proxy.total_timeout as always): the point of the key is that the client may
// come back for the reply, and the usual way back is a retry after its own timeout, by
// which time the first connection is gone.
class ReplyReuse {
  public:
    ReplyReuse(const PoolConfig& config, Logger& log, PoolMetrics& metrics, const TimeSource& time);

    // `relay`: the relay of the group that serves the request; cache and Idempotency-Key
    // entries are the group's own, so one group's reply never answers another's request.
    // `sink`: see Relay::forward; only a request that neither cache nor key touches can be
    // handed to the event loop (the others are recorded as they pass).
    RelayOutcome forward(Exchange& exchange, const std::string& target,
                         const std::string& request_id, Relay& relay, const OutcomeSink& sink = {});

    ReuseSnapshot snapshot();

  private:
    RelayOutcome coalesce(Exchange& exchange, const std::string& target,
                          const std::string& request_id, const RequestTraits& traits, Relay& relay);
    using ReplyHandler = std::function<void(std::shared_ptr<const StoredReply>)>;
    // Cache lookup, then the relay through a recording tee. `on_reply` is called once with
    // the complete reply (null when there is none), as early as it is known: before the
    // client has all of it when the reply has a length. `outlive_client`: the work goes on
    // when the client leaves.
    RelayOutcome serve_fresh(Exchange& exchange, const std::string& target,
                             const std::string& request_id, const RequestTraits& traits,
                             bool outlive_client, const ReplyHandler& on_reply, Relay& relay);

    const PoolConfig& config_;
    Logger& log_;
    PoolMetrics& metrics_;
    std::unique_ptr<ResponseCache> cache_;  // null when the cache is off
    std::unique_ptr<Coalescer> coalescer_;  // null when Idempotency-Keys are ignored
};

}  // namespace llama_pool
