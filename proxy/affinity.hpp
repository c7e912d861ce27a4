#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace llama_pool {

// Prefix affinity: requests whose prompts share a leading prefix go to the same worker, so
// llama-server's prompt cache (cache_prompt) is reused instead of re-evaluating the prefix.

// The text a request's prompt cache would start with: `prompt` (a string, or the first
// string of an array), else the chat `messages` rendered as role and content in order.
// Empty when there is none.
std::string prompt_text(const nlohmann::json& body);

// Whether the JSON text nests arrays and objects at most `max_depth` deep (brackets inside
// strings do not count; the text need not be valid). A linear scan with no allocation: the
// relay checks it before building a DOM of a client's body, which for a body of 32 MiB of
// '[' would take gigabytes.
bool json_nesting_at_most(std::string_view text, std::size_t max_depth);

// A stable 64-bit key of the first `prefix_chars` bytes of `text` (FNV-1a). Empty text -> 0.
std::uint64_t affinity_key(std::string_view text, std::size_t prefix_chars);

// Rendezvous (highest-random-weight) ranking of `worker_ids` for `key`: the first is the
// preferred worker. When a worker joins or leaves, only the keys that rank it first move,
// which keeps the other workers' caches warm.
std::vector<std::size_t> rendezvous_order(std::uint64_t key,
                                          const std::vector<std::string>& worker_ids);

}  // namespace llama_pool
