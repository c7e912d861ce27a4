#pragma once

#include <string_view>

namespace llama_pool {

enum class HealthVerdict {
    ok,       // serving
    loading,  // still loading the model
    busy,     // alive, no free slot (older forks say so on /health)
    error,    // answered, but not healthy
};

std::string_view to_string(HealthVerdict verdict);

// Reads a /health reply leniently: the stock server's 200 {"status":"ok"} and its 503
// {"error":{"message":"Loading model",...}}, and the older BitNet fork's
// {"status":"loading model"} / {"status":"no slot available"}. Never throws.
HealthVerdict classify_health(int status, std::string_view body);

}  // namespace llama_pool
