#include "proxy/request_traits.hpp"

#include <functional>

namespace llama_pool {

namespace {

std::uint64_t combine(std::uint64_t seed, std::string_view part) {
    const std::uint64_t h = std::hash<std::string_view>{}(part);
    return seed ^ (h + 0x9e3779b97f4a7c15ull + (seed << 6) + (seed >> 2));
}

}  // namespace

bool is_deterministic(const nlohmann::json& body) {
    if (!body.is_object()) {
        return false;
    }
    const auto temperature = body.find("temperature");
    if (temperature != body.end() && temperature->is_number() && temperature->get<double>() == 0) {
        return true;
    }
    const auto seed = body.find("seed");
    if (seed == body.end()) {
        return false;
    }
    if (seed->is_number_unsigned()) {
        return seed->get<std::uint64_t>() < 0xFFFFFFFFull;
    }
    // Non-negative integers parse as unsigned, so a signed one here is negative: -1 is
    // llama-server's "random", and the others wrap to numbers we do not want to reason about.
    return false;
}

RequestTraits read_request_traits(const HttpRequest& request, std::string_view target) {
    RequestTraits t;
    t.post = request.method == "POST";
    const auto body = nlohmann::json::parse(request.body, nullptr, false);
    if (body.is_object()) {
        try {
            t.canonical_body = body.dump();  // nlohmann::json keeps object keys sorted
        } catch (const nlohmann::json::exception&) {
            // Not representable again (the parser let something through): not cacheable.
        }
        const auto stream = body.find("stream");
        t.stream = stream != body.end() && !(stream->is_boolean() && !stream->get<bool>());
        t.deterministic = is_deterministic(body);
    }
    for (const auto& [name, value] : request.headers.fields()) {
        if (iequals(name, "Cache-Control")) {
            t.no_store = t.no_store || header_has_token(value, "no-store");
            t.no_cache = t.no_cache || t.no_store || header_has_token(value, "no-cache");
        }
    }
    if (const auto key = request.headers.get("Idempotency-Key")) {
        t.idempotency_key = std::string(*key);
    }
    t.fingerprint = combine(combine(combine(0, request.method), target),
                            t.canonical_body ? *t.canonical_body : request.body);
    return t;
}

}  // namespace llama_pool
