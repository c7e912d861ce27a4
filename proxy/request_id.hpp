#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace llama_pool {

// An incoming X-Request-Id is kept when it is safe to echo in headers and logs: 1 to 128
// characters from [A-Za-z0-9._:-]. Anything else (a header injection attempt, a huge
// value) is replaced by a fresh id, so a client cannot forge log lines or response headers.
bool is_acceptable_request_id(std::string_view id);
std::string new_request_id();
std::string request_id_for(std::optional<std::string_view> incoming);

}  // namespace llama_pool
