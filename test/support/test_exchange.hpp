#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "common/exchange.hpp"

namespace llama_pool::test {

// A client exchange with no socket: records the response, and calls the optional hooks at
// each write and at finish(), so a test can look at the pool's state at those moments.
class TestExchange final : public Exchange {
  public:
    explicit TestExchange(HttpRequest request, std::string remote = "127.0.0.1")
        : request_(std::move(request)), remote_(std::move(remote)) {}

    const HttpRequest& request() const override { return request_; }
    const std::string& remote_address() const override { return remote_; }
    bool respond(int status, Headers headers, std::string_view body) override {
        status_ = status;
        headers_ = std::move(headers);
        body_ = body;
        return true;
    }
    bool begin(int status, Headers headers, std::optional<std::size_t> length) override {
        status_ = status;
        headers_ = std::move(headers);
        length_ = length;
        return true;
    }
    bool write(std::string_view data) override {
        body_ += data;
        if (on_write) {
            on_write();
        }
        return true;
    }
    bool finish() override {
        if (on_finish) {
            on_finish();
        }
        return true;
    }
    void abort() override {}
    bool responded() const override { return status_ != 0; }
    int response_status() const override { return status_; }
    bool client_gone() const override { return false; }
    IoWatch watch() const override { return {}; }

    const std::string& body() const { return body_; }
    const Headers& headers() const { return headers_; }
    std::optional<std::size_t> length() const { return length_; }

    std::function<void()> on_write;
    std::function<void()> on_finish;

  private:
    HttpRequest request_;
    std::string remote_;
    int status_ = 0;
    std::optional<std::size_t> length_;
    Headers headers_;
    std::string body_;
};

}  // namespace llama_pool::test
