#pragma once

#include <memory>
#include <string>

#include "common/config.hpp"
#include "common/http_server.hpp"
#include "common/log.hpp"
#include "common/random.hpp"
#include "proxy/console/console.hpp"
#include "proxy/embeddings_fanout.hpp"
#include "proxy/group_set.hpp"
#include "proxy/inbound_auth.hpp"
#include "proxy/pool_metrics.hpp"
#include "proxy/pool_routes.hpp"
#include "proxy/rate_limiter.hpp"
#include "proxy/relay.hpp"
#include "proxy/reply_reuse.hpp"
#include "proxy/request_id.hpp"
#include "proxy/route_handler.hpp"

namespace llama_pool {

// The client-facing side: the HTTP server, the pool's own routes and the relay for
// everything else.
class ProxyServer {
  public:
    // `client_keys` is the full set of accepted client keys (config list plus key file).
    ProxyServer(const PoolConfig& config, GroupSet& groups, Logger& log, PoolMetrics& metrics,
                std::vector<std::string> client_keys);
    ~ProxyServer();

    bool start(std::string& error);
    std::uint16_t port() const { return server_->port(); }
    // Graceful: stop accepting, let requests finish until `deadline`, then stop. Returns how
    // many requests were still running at the deadline (and were cut).
    std::size_t shutdown(TimePoint deadline);
    // Cuts every running request short (second signal); shutdown() then returns at once.
    void abort() {
        console_->stop();
        server_->abort();
    }
    HttpServer& http() { return *server_; }
    // Extra endpoints (summarize, jobs), tried after the pool's own; set before start().
    void set_workload_routes(RouteHandler* routes) { workload_routes_ = routes; }

  private:
    void handle(Exchange& exchange);
    // What the access log and the request metrics need of a request, kept by value: a streamed
    // body handed to the event loop ends after its handler returned.
    struct RequestRecord {
        std::string path;
        std::string method;
        std::string request_id;
        TimePoint started;
    };
    void serve(Exchange& exchange, const std::string& path, const std::string& target,
               const std::string& request_id, RelayOutcome& outcome, const OutcomeSink& sink);
    void record(const RequestRecord& request, const RelayOutcome& outcome);

    const PoolConfig& config_;
    GroupSet& groups_;
    Logger& log_;
    PoolMetrics& metrics_;
    PoolRoutes routes_;
    SteadyTimeSource time_;
    ReplyReuse reuse_;
    EmbeddingsFanout fanout_;
    InboundAuth auth_;
    RequestIds request_ids_;
    std::unique_ptr<KeyedRateLimiter> rate_limiter_;  // null when rate limiting is off
    RouteHandler* workload_routes_ = nullptr;
    std::unique_ptr<Console> console_;  // stopped before server_ drains or stops
    std::unique_ptr<HttpServer> server_;
};

}  // namespace llama_pool
