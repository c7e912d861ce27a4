#pragma once

#include <string>
#include <string_view>

namespace llama_pool {

// llama-server's error type for an HTTP status ("invalid_request_error" for 400, ...).
std::string_view error_type_for_status(int status);

// The one error shape every client already parses:
//   {"error":{"code":503,"message":"...","type":"unavailable_error","source":"llama-pool"}}
// `source` marks errors the pool made itself, so an operator can tell them from a worker's.
std::string make_error_body(int status, std::string_view message);
std::string make_error_body(int status, std::string_view message, std::string_view type);

}  // namespace llama_pool
