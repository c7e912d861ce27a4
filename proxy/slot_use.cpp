#include "proxy/slot_use.hpp"

#include <array>

namespace llama_pool {

SlotUse slot_use(std::string_view method, std::string_view path) {
    // Answered by llama-server's HTTP thread, whatever the method.
    static constexpr std::array<std::string_view, 7> kLight = {
        "/tokenize",  "/detokenize", "/apply-template", "/health",
        "/v1/health", "/props",      "/lora-adapters",
    };
    for (const auto light : kLight) {
        if (path == light) {
            return SlotUse::light;
        }
    }
    // Listings: read-only. (POST /slots/{id}?action=... saves or restores a slot's cache:
    // not light.)
    const bool read = method == "GET" || method == "HEAD";
    if (read &&
        (path == "/models" || path == "/v1/models" || path == "/slots" || path == "/metrics")) {
        return SlotUse::light;
    }
    return SlotUse::generation;
}

}  // namespace llama_pool
