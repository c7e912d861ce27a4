#pragma once

#include <optional>
#include <string_view>

#include "common/http_message.hpp"

namespace llama_pool {

// Compares without an early exit, so the time taken does not reveal how much of a guessed
// key was right.
bool constant_time_equals(std::string_view a, std::string_view b);

// The key a client presented, as llama-server accepts it: "Authorization: Bearer KEY" or
// "X-Api-Key: KEY".
std::optional<std::string_view> presented_key(const Headers& headers);

}  // namespace llama_pool
