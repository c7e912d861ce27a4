#pragma once

#include <string>

#include "common/http_server.hpp"
#include "proxy/backend_registry.hpp"
#include "supervisor/supervisor.hpp"

namespace llama_pool {

// The endpoints the pool answers itself: GET /health, GET /, /pool/status,
// /pool/workers/{id}/log, POST /pool/workers/{id}/restart. `supervisor` may be null (a pool
// of unmanaged upstreams). /pool/* needs `admin_key` when one is set, and answers only
// loopback clients when none is.
class PoolRoutes {
  public:
    PoolRoutes(BackendRegistry& registry, Supervisor* supervisor, std::string version,
               std::string admin_key)
        : registry_(registry),
          supervisor_(supervisor),
          version_(std::move(version)),
          admin_key_(std::move(admin_key)) {}

    // True when the path belongs to the pool (then the exchange has been answered). GET /slots
    // and GET /props are answered from the workers' own replies, aggregated.
    bool handle(Exchange& exchange, const std::string& path, const std::string& request_id);

    nlohmann::json status_json();

  private:
    void health(Exchange& exchange, const std::string& request_id);
    void index_page(Exchange& exchange, const std::string& request_id);
    void slots(Exchange& exchange, const std::string& request_id);
    void props(Exchange& exchange, const std::string& request_id);

    BackendRegistry& registry_;
    Supervisor* supervisor_;
    std::string version_;
    std::string admin_key_;
};

void respond_json(Exchange& exchange, int status, const std::string& body,
                  const std::string& request_id);

}  // namespace llama_pool
