#include "common/error_body.hpp"

#include <nlohmann/json.hpp>

namespace llama_pool {

std::string_view error_type_for_status(int status) {
    switch (status) {
        case 400:
        case 413:
        case 414:
        case 431:
            return "invalid_request_error";
        case 401:
        case 403:
            return "authentication_error";
        case 404:
            return "not_found_error";
        case 408:
        case 504:
            return "timeout_error";
        case 429:
            return "rate_limit_error";
        case 501:
            return "not_supported_error";
        case 502:
        case 503:
            return "unavailable_error";
        default:
            return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

std::string make_error_body(int status, std::string_view message) {
    return make_error_body(status, message, error_type_for_status(status));
}

std::string make_error_body(int status, std::string_view message, std::string_view type) {
    nlohmann::ordered_json error;
    error["code"] = status;
    error["message"] = message;
    error["type"] = type;
    error["source"] = "llama-pool";
    nlohmann::ordered_json body;
    body["error"] = std::move(error);
    return body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace llama_pool
