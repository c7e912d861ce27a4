#pragma once

#include <functional>
#include <memory>
#include <string>

#include "common/exchange.hpp"
#include "proxy/relay.hpp"
#include "proxy/relay_plan.hpp"
#include "proxy/reply_body.hpp"

namespace llama_pool {

// A committed body handed to the HTTP server's event loop (see BodyPump): no thread waits
// for the worker between two tokens. The server calls it when the worker's socket is
// readable; it reads what is there without blocking and passes it on through ReplyBody, as
// the blocking loop does. When it is destroyed (its last call done) the request's outcome
// goes to `sink`, which writes the access log and the request metrics.
class RelayPump final : public BodyPump {
  public:
    RelayPump(std::shared_ptr<ReplyBody> body, OutcomeSink sink)
        : body_(std::move(body)), sink_(std::move(sink)) {}
    ~RelayPump() override;
    RelayPump(const RelayPump&) = delete;
    RelayPump& operator=(const RelayPump&) = delete;

    // The exchange took it: from now on the outcome is this pump's to report. Until then a
    // pump the exchange refused is destroyed without a word, and the caller relays blocking.
    void taken(std::unique_ptr<RelayPlan> plan) {
        plan_ = std::move(plan);
        taken_ = true;
    }

    int source_fd() const override { return fd_; }
    Step pull(std::string& out) override;
    TimePoint deadline() const override { return body_->idle_deadline(); }
    Step on_timeout(std::string& out) override;
    void on_client_gone() override { body_->client_gone(); }

  private:
    Step broken(IoStatus io, const std::string& error, std::string& out);

    std::shared_ptr<ReplyBody> body_;
    OutcomeSink sink_;
    // The worker connection stays open, and so the same fd, until the pump is destroyed.
    const int fd_ = body_->connection().fd();
    std::unique_ptr<RelayPlan> plan_;  // counts the request in the retry budget until the end
    bool taken_ = false;
};

}  // namespace llama_pool
