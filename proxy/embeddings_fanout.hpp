#pragma once

#include <string>

#include "common/exchange.hpp"
#include "common/log.hpp"
#include "proxy/model_group.hpp"
#include "proxy/relay.hpp"

namespace llama_pool {

// /v1/embeddings, /embeddings and /embedding requests whose input is a list, spread over the
// ready workers of the group that serves them (proxy/embedding_batch decides how), and the
// slices' replies merged into the one reply a single llama-server gives. Each slice goes
// through the group's relay like any request: it waits in the group's queue for a lease,
// is retried on another worker until its reply starts, and feeds the breakers. A slice
// whose reply broke off after it started is sent once more elsewhere (nothing has reached
// the client yet). The client gets one reply: the merged one, or the first failed slice's
// answer in input order (the other slices are then cancelled).
class EmbeddingsFanout {
  public:
    explicit EmbeddingsFanout(Logger& log) : log_(log) {}

    // False, having done nothing, when the request is not a batch to spread (another route,
    // one input, a list that fits one worker, one ready worker): relay it whole. True when
    // it was answered here; `outcome` then says how, for the access log and metrics.
    bool serve(Exchange& exchange, ModelGroup& group, const std::string& path,
               const std::string& target, const std::string& request_id,
               RelayOutcome& outcome) const;

  private:
    Logger& log_;
};

// Whether `path` is one of the embeddings routes the fan-out applies to.
bool is_embeddings_route(std::string_view path);

}  // namespace llama_pool
