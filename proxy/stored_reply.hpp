#pragma once

#include <cstddef>
#include <string>

#include "common/exchange.hpp"
#include "common/http_message.hpp"

namespace llama_pool {

// A complete reply as the pool sent it to a client: what the response cache keeps and what
// requests sharing one generation (Idempotency-Key) are given. Immutable once made; shared
// through shared_ptr<const StoredReply>.
struct StoredReply {
    int status = 0;
    // End-to-end headers without X-Request-Id: each request that receives the reply gets its
    // own id.
    Headers headers;
    std::string body;

    // Bytes it holds, for the memory bounds of whatever keeps it.
    std::size_t size() const;
};

// Answers `exchange` with `reply`, this request's id, and `extra` fields (each replacing any
// field of the same name in the reply). False when the client could not be written to.
bool send_stored_reply(Exchange& exchange, const StoredReply& reply, const std::string& request_id,
                       const Headers& extra);

}  // namespace llama_pool
