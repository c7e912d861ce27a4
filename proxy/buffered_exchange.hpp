#pragma once

#include <functional>
#include <string>

#include "common/exchange.hpp"

namespace llama_pool {

// An in-process request whose response is kept in memory: how the pool calls its own relay
// (summarization chunks) with the admission, retry and breaker path of a client request.
class BufferedExchange final : public Exchange {
  public:
    // `watch` interrupts blocking work; `cancelled` says the requester gave up. A body larger
    // than `max_body_bytes` aborts the exchange.
    BufferedExchange(HttpRequest request, std::string remote, IoWatch watch,
                     std::function<bool()> cancelled, std::size_t max_body_bytes = 16 << 20)
        : request_(std::move(request)),
          remote_(std::move(remote)),
          watch_(watch),
          cancelled_(std::move(cancelled)),
          max_body_bytes_(max_body_bytes) {}

    const HttpRequest& request() const override { return request_; }
    const std::string& remote_address() const override { return remote_; }
    bool respond(int status, Headers headers, std::string_view body) override;
    bool begin(int status, Headers headers, std::optional<std::size_t> content_length) override;
    bool write(std::string_view data) override;
    bool finish() override;
    void abort() override { aborted_ = true; }
    bool responded() const override { return status_ != 0; }
    int response_status() const override { return status_; }
    bool client_gone() const override { return cancelled_ && cancelled_(); }
    IoWatch watch() const override { return watch_; }

    // A complete response: begun, finished and not aborted.
    bool complete() const { return finished_ && !aborted_; }
    const Headers& response_headers() const { return headers_; }
    const std::string& response_body() const { return body_; }

  private:
    HttpRequest request_;
    std::string remote_;
    IoWatch watch_;
    std::function<bool()> cancelled_;
    std::size_t max_body_bytes_;
    int status_ = 0;
    Headers headers_;
    std::string body_;
    bool finished_ = false;
    bool aborted_ = false;
};

}  // namespace llama_pool
