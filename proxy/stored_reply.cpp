#include "proxy/stored_reply.hpp"

namespace llama_pool {

namespace {
// Allocations and bookkeeping that strings' sizes do not show; rough, but it keeps a flood
// of tiny replies bounded too.
constexpr std::size_t kOverhead = 64;
}  // namespace

std::size_t StoredReply::size() const {
    std::size_t n = kOverhead + body.size();
    for (const auto& [name, value] : headers.fields()) {
        n += name.size() + value.size() + 2 * sizeof(std::string);
    }
    return n;
}

bool send_stored_reply(Exchange& exchange, const StoredReply& reply, const std::string& request_id,
                       const Headers& extra) {
    Headers headers = reply.headers;
    for (const auto& [name, value] : extra.fields()) {
        headers.set(name, value);
    }
    headers.set("X-Request-Id", request_id);
    return exchange.respond(reply.status, std::move(headers), reply.body);
}

}  // namespace llama_pool
