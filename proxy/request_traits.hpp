#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "common/http_message.hpp"

namespace llama_pool {

// What the response cache and the coalescer need to know about a request, read once from its
// method, headers and body. Pure.
struct RequestTraits {
    bool post = false;
    // The body as a JSON object re-serialized with sorted keys and no spaces, so that two
    // spellings of one request are one cache key; absent when the body is not a JSON object.
    std::optional<std::string> canonical_body;
    // Asks for a streamed reply. A `stream` field we cannot read as false counts as a stream:
    // only replies known to be plain JSON are shared.
    bool stream = false;
    // The worker would give the same reply again: see is_deterministic().
    bool deterministic = false;
    bool no_cache = false;  // Cache-Control: no-cache (or no-store): no lookup
    bool no_store = false;  // Cache-Control: no-store: the reply is not stored either
    std::optional<std::string> idempotency_key;
    // Same method, target and body (canonical when JSON); for telling a reused
    // Idempotency-Key on a different request.
    std::uint64_t fingerprint = 0;

    // A deterministic, non-streamed JSON POST: its 200 reply may be cached.
    bool cacheable() const { return post && canonical_body && !stream && deterministic; }
    // A non-streamed POST with an Idempotency-Key: it may share another's generation.
    bool coalescable() const { return post && idempotency_key && !stream; }
};

// Longest Idempotency-Key accepted (Stripe's limit); a longer one is refused with 400.
constexpr std::size_t kMaxIdempotencyKeyBytes = 255;

// `target` is the request's normalized target (what the relay sends on).
RequestTraits read_request_traits(const HttpRequest& request, std::string_view target);

// Whether a llama-server request body pins its sampling: temperature 0 (greedy), or a fixed
// seed. llama-server reads the seed as a 32-bit unsigned number in which 0xFFFFFFFF (what -1
// becomes) means "random", so only 0 .. 0xFFFFFFFE count as fixed.
bool is_deterministic(const nlohmann::json& body);

}  // namespace llama_pool
