#include "proxy/recording_exchange.hpp"

namespace llama_pool {

std::shared_ptr<const StoredReply> RecordingExchange::reply() const {
    if (!complete_ || aborted_ || overflowed_) {
        return nullptr;
    }
    return std::make_shared<const StoredReply>(recorded_);
}

void RecordingExchange::complete_when_whole() {
    if (complete_ || !length_ || recorded_.body.size() < *length_) {
        return;
    }
    complete_ = true;
    if (options_.on_complete && !overflowed_ && !aborted_) {
        options_.on_complete(reply());
    }
}

void RecordingExchange::record_head(int status, const Headers& headers) {
    head_sent_ = true;
    status_ = status;
    recorded_.status = status;
    recorded_.headers = headers;
    recorded_.headers.remove("X-Request-Id");
}

void RecordingExchange::record_body(std::string_view data) {
    if (overflowed_) {
        return;
    }
    if (recorded_.body.size() + data.size() > options_.max_bytes) {
        overflowed_ = true;
        recorded_.body = std::string();  // give the memory back now, not at the end
        return;
    }
    recorded_.body += data;
}

Headers RecordingExchange::client_headers(Headers headers) const {
    for (const auto& [name, value] : options_.extra_headers.fields()) {
        headers.set(name, value);
    }
    return headers;
}

bool RecordingExchange::gone_before_reply() {
    // The reply is about to start: a client that left while the work ran is noticed here
    // (writes to it could still land in the socket buffer and look fine).
    if (options_.outlive_client && !client_lost_ && client_.client_gone()) {
        client_lost_ = true;
    }
    return client_lost_;
}

bool RecordingExchange::passed(bool ok) {
    if (ok || !options_.outlive_client) {
        return ok;
    }
    client_lost_ = true;
    return true;
}

bool RecordingExchange::respond(int status, Headers headers, std::string_view body) {
    if (head_sent_) {
        return false;
    }
    record_head(status, headers);
    length_ = body.size();
    record_body(body);
    complete_when_whole();
    finished_ = true;
    if (gone_before_reply()) {
        return true;
    }
    return passed(client_.respond(status, client_headers(std::move(headers)), body));
}

bool RecordingExchange::begin(int status, Headers headers,
                              std::optional<std::size_t> content_length) {
    if (head_sent_) {
        return false;
    }
    record_head(status, headers);
    length_ = content_length;
    complete_when_whole();
    if (gone_before_reply()) {
        return true;
    }
    return passed(client_.begin(status, client_headers(std::move(headers)), content_length));
}

bool RecordingExchange::write(std::string_view data) {
    if (!head_sent_ || finished_) {
        return false;
    }
    record_body(data);
    complete_when_whole();
    if (client_lost_) {
        return true;
    }
    return passed(client_.write(data));
}

bool RecordingExchange::finish() {
    if (!head_sent_) {
        return false;
    }
    finished_ = true;
    // A chunked reply ends here, whole or cut short: the relay's outcome tells which.
    complete_ = complete_ || !length_;
    if (client_lost_) {
        return true;
    }
    return passed(client_.finish());
}

void RecordingExchange::abort() {
    aborted_ = true;
    client_.abort();
}

bool RecordingExchange::client_gone() const {
    if (options_.outlive_client) {
        return false;
    }
    return client_.client_gone();
}

IoWatch RecordingExchange::watch() const {
    auto watch = client_.watch();
    if (options_.outlive_client) {
        watch.watch_fd = -1;  // the client's hang-up must not wake the relay
    }
    return watch;
}

}  // namespace llama_pool
