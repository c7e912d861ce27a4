#pragma once

#include <string>

#include "common/exchange.hpp"

namespace llama_pool {

// Endpoints served inside the pool rather than relayed (the workload features). They run
// after authentication and rate limiting, like any client route.
class RouteHandler {
  public:
    virtual ~RouteHandler() = default;
    // True when `path` is one of this handler's; the exchange has then been answered.
    virtual bool handle(Exchange& exchange, const std::string& path,
                        const std::string& request_id) = 0;
};

}  // namespace llama_pool
