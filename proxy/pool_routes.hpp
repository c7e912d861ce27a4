#pragma once

#include <string>

#include "common/http_server.hpp"
#include "proxy/group_set.hpp"
#include "proxy/route_handler.hpp"

namespace llama_pool {

// The endpoints the pool answers itself: GET /health, GET /slots, GET /props,
// GET /v1/models (when there are groups), /pool/status, /pool/queue, /pool/workers/{id}/log,
// POST /pool/workers/{id}/restart, POST /pool/restart and POST /pool/groups/{name}/start|stop.
// /pool/* needs `admin_key` when one is set, and answers only loopback clients when none is.
// GET / is the console's (proxy/console).
class PoolRoutes {
  public:
    PoolRoutes(GroupSet& groups, std::string version, std::string admin_key)
        : groups_(groups), version_(std::move(version)), admin_key_(std::move(admin_key)) {}

    // True when the path belongs to the pool (then the exchange has been answered). GET /slots
    // and GET /props are answered from the workers' own replies, aggregated over every group,
    // or over one with ?model=.
    bool handle(Exchange& exchange, const std::string& path, const std::string& request_id);

    nlohmann::json status_json();
    // GET /pool/queue: depth, and per tenant what waits, what runs and the oldest wait.
    nlohmann::json queue_json();
    // More /pool/* routes (the console's), tried after this class's own and after the same
    // admin check; set before serving.
    void set_admin_routes(RouteHandler* routes) { admin_routes_ = routes; }

  private:
    void health(Exchange& exchange, const std::string& request_id);
    void slots(Exchange& exchange, const std::string& request_id);
    void props(Exchange& exchange, const std::string& request_id);
    void models(Exchange& exchange, const std::string& request_id);
    bool admin(Exchange& exchange, const std::string& path, const std::string& request_id);
    void group_action(Exchange& exchange, std::string_view name, std::string_view action,
                      const std::string& request_id);
    // The groups a metadata request is about: the one its ?model= names, else all. Empty
    // (after a 404 was sent) when ?model= names no group.
    std::vector<ModelGroup*> selected_groups(Exchange& exchange, const std::string& request_id);

    GroupSet& groups_;
    std::string version_;
    std::string admin_key_;
    RouteHandler* admin_routes_ = nullptr;
};

void respond_json(Exchange& exchange, int status, const std::string& body,
                  const std::string& request_id);

}  // namespace llama_pool
