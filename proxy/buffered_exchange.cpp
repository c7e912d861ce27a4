#include "proxy/buffered_exchange.hpp"

namespace llama_pool {

bool BufferedExchange::respond(int status, Headers headers, std::string_view body) {
    return begin(status, std::move(headers), body.size()) && write(body) && finish();
}

bool BufferedExchange::begin(int status, Headers headers, std::optional<std::size_t>) {
    if (status_ != 0 || aborted_) {
        return false;
    }
    status_ = status;
    headers_ = std::move(headers);
    return true;
}

bool BufferedExchange::write(std::string_view data) {
    if (status_ == 0 || finished_ || aborted_) {
        return false;
    }
    if (body_.size() + data.size() > max_body_bytes_) {
        aborted_ = true;
        return false;
    }
    body_ += data;
    return true;
}

bool BufferedExchange::finish() {
    if (status_ == 0 || aborted_) {
        return false;
    }
    finished_ = true;
    return true;
}

}  // namespace llama_pool
