#include "proxy/worker_dialect.hpp"

#include <array>
#include <string>

namespace llama_pool {

SlotActivity slot_activity(const nlohmann::json& slot) {
    if (!slot.is_object()) {
        return SlotActivity::unknown;
    }
    if (const auto it = slot.find("is_processing"); it != slot.end() && it->is_boolean()) {
        return it->get<bool>() ? SlotActivity::busy : SlotActivity::idle;
    }
    if (const auto it = slot.find("state"); it != slot.end() && it->is_number()) {
        return it->get<double>() == 0 ? SlotActivity::idle : SlotActivity::busy;
    }
    return SlotActivity::unknown;
}

const char* to_string(SlotActivity a) {
    switch (a) {
        case SlotActivity::idle:
            return "idle";
        case SlotActivity::busy:
            return "busy";
        case SlotActivity::unknown:
            break;
    }
    return "unknown";
}

Worker500 classify_worker_500(std::string_view body) {
    const auto doc = nlohmann::json::parse(body, nullptr, false);
    if (!doc.is_object()) {
        return Worker500::maybe_worker_fault;
    }
    const auto error = doc.find("error");
    if (error == doc.end() || !error->is_object()) {
        return Worker500::maybe_worker_fault;
    }
    const auto message = error->value("message", std::string());
    // Messages llama-server builds from the request alone: nlohmann's exceptions while it
    // reads the body (a missing key, a wrong type, a parse error), and its own checks of
    // field shapes ("\"prompt\" must be a string, ...").
    constexpr std::array<std::string_view, 4> request_markers = {
        "[json.exception.", " must be a ", " must be an ", "must not be empty"};
    for (const auto marker : request_markers) {
        if (message.find(marker) != std::string::npos) {
            return Worker500::request_mistake;
        }
    }
    return Worker500::maybe_worker_fault;
}

const char* to_string(Worker500 c) {
    return c == Worker500::request_mistake ? "request_mistake" : "maybe_worker_fault";
}

}  // namespace llama_pool
