#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "common/exchange.hpp"
#include "proxy/stored_reply.hpp"

namespace llama_pool {

// A tee in front of a client's exchange: whatever the relay answers goes to the client as
// usual and is also recorded, up to `max_bytes` of body, so that it can be cached or handed
// to other requests. Not thread-safe: used by the request's own thread, like the exchange it
// wraps.
class RecordingExchange final : public Exchange {
  public:
    struct Options {
        std::size_t max_bytes = 0;
        // The request's work must finish even when its client leaves (others wait for the
        // reply): the client's hang-up is then hidden from the relay (no cancellation, no
        // wake-up) and writes to a client that is gone are dropped, not failed. Shutdown
        // still wakes the relay.
        bool outlive_client = false;
        // Fields added to the head sent to the client (not to the recording), each replacing
        // a field of the same name: X-Cache, for instance.
        Headers extra_headers;
        // Called once with a length-delimited reply (respond(), or begin() with a content
        // length) as soon as all of it is recorded, before its last bytes go to the client:
        // whoever the client tells next already finds it stored. A chunked reply is only
        // known whole by what the relay reports after it (finish() also ends a reply cut
        // short), so it is not announced here.
        std::function<void(std::shared_ptr<const StoredReply>)> on_complete;
    };

    RecordingExchange(Exchange& client, Options options)
        : client_(client), options_(std::move(options)) {}

    // The reply, when one was sent completely within the size bound; null otherwise
    // (aborted, cut short of its length, too large, or nothing sent).
    std::shared_ptr<const StoredReply> reply() const;
    // The client hung up or could not be written to while the reply went on without it.
    bool client_lost() const { return client_lost_; }

    const HttpRequest& request() const override { return client_.request(); }
    const std::string& remote_address() const override { return client_.remote_address(); }
    bool respond(int status, Headers headers, std::string_view body) override;
    bool begin(int status, Headers headers, std::optional<std::size_t> content_length) override;
    bool write(std::string_view data) override;
    bool finish() override;
    void abort() override;
    bool responded() const override { return head_sent_; }
    int response_status() const override { return status_; }
    bool client_gone() const override;
    IoWatch watch() const override;

  private:
    void record_head(int status, const Headers& headers);
    void record_body(std::string_view data);
    // Marks the reply whole once its announced length is recorded, and announces it.
    void complete_when_whole();
    Headers client_headers(Headers headers) const;
    bool gone_before_reply();
    // What a call on the client returns to the relay: its own result, unless the reply must
    // go on without the client.
    bool passed(bool ok);

    Exchange& client_;
    Options options_;
    bool head_sent_ = false;
    int status_ = 0;
    std::optional<std::size_t> length_;  // announced by the head; none when chunked
    bool complete_ = false;
    bool finished_ = false;
    bool aborted_ = false;
    bool overflowed_ = false;
    bool client_lost_ = false;
    StoredReply recorded_;
};

}  // namespace llama_pool
