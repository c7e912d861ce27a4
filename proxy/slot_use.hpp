#pragma once

#include <string_view>

namespace llama_pool {

// What a request costs a worker. llama-server runs generations (completions, chat,
// embeddings, reranking, infill) in its slots, one request per slot; its other endpoints
// answer from the HTTP thread without touching a slot. Those "light" requests need no slot
// lease: holding one for them made a /tokenize wait behind generations and cost 0.57 of
// nginx's throughput (issue 18). A per-worker connection cap bounds them instead.
enum class SlotUse { generation, light };

// By method and path (no query). Anything not known to be light takes a slot: a new endpoint
// is assumed to generate until it is listed here.
SlotUse slot_use(std::string_view method, std::string_view path);

}  // namespace llama_pool
