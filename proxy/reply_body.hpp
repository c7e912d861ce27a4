#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "common/exchange.hpp"
#include "common/http_client.hpp"
#include "proxy/backend_registry.hpp"
#include "proxy/relay.hpp"
#include "proxy/sse_framer.hpp"
#include "proxy/usage_scanner.hpp"

namespace llama_pool {

// The body of a reply the relay has committed to: what the worker sends after the head, on
// its way to the client. It owns what the body still needs once the decisions are made: the
// lease on the worker's slot, the worker connection, the breaker verdict, SSE framing and
// the usage scan, and the request's outcome. It frees the worker's slot as soon as the worker
// has sent everything, before the client sees the end: a client that sends its next request
// at once then finds the worker free (prefix affinity keeps its prompt cache).
//
// Destroying it before the end closes the worker connection, which cancels the generation,
// and gives back a breaker trial slot without a verdict (nobody learnt anything).
class ReplyBody {
  public:
    struct Start {
        Lease lease;
        HttpClientConnection conn;
        bool events = false;             // an event stream without a length: passed event by event
        bool event_stream = false;       // Content-Type text/event-stream, with a length or not
        SseFramer framer;                // holds the start of an event whose end has not arrived
        Blame blame = Blame::worker_ok;  // the worker's verdict if the body ends well
        AttemptOutcome outcome = AttemptOutcome::ok;  // its metric label then
        TimePoint total_deadline;
        std::string request_id;
    };

    ReplyBody(Relay& relay, Start start, RelayOutcome outcome);
    ~ReplyBody();
    ReplyBody(const ReplyBody&) = delete;
    ReplyBody& operator=(const ReplyBody&) = delete;

    // A piece of the worker's body (already counted and framed when `prefetched`): appends what
    // goes to the client now to `out`; `done` when it was the last.
    void on_piece(std::string_view piece, bool done, std::string& out, bool prefetched = false);
    // When a silent worker counts as stalled: stream_idle_timeout after the last piece it
    // sent (stable between pieces, since an event loop keeps asking).
    TimePoint idle_deadline() const;
    // The body ended (well or not): counts the completion and the tokens it reported.
    void completed();
    // The worker failed mid-body. Returns the bytes that end the client's body (a stream's
    // error event), or nothing when the body can only be cut.
    std::optional<std::string> broken(IoStatus io, const std::string& error);
    void client_gone() { outcome_.client_gone = true; }

    // For an event loop that watches the connection's fd: the connection is handed back to the
    // worker's pool when this is destroyed, not as soon as the body is complete.
    void keep_connection() { keep_connection_ = true; }

    HttpClientConnection& connection() { return conn_; }
    bool released() const { return !lease_; }
    RelayOutcome& outcome() { return outcome_; }

  private:
    void release_worker();

    Relay& relay_;
    std::optional<Lease> lease_;
    std::shared_ptr<Backend> backend_;  // outlives the lease: the connection goes back to it
    std::string worker_;
    HttpClientConnection conn_;
    bool events_;
    bool event_stream_;
    SseFramer framer_;
    Blame blame_;
    AttemptOutcome ok_outcome_;
    TimePoint total_deadline_;
    std::string request_id_;
    UsageScanner usage_;
    TimePoint last_piece_;
    bool reported_ = false;
    bool keep_connection_ = false;
    RelayOutcome outcome_;
};

// Relays the rest of a committed body with the calling thread, blocking, and ends the
// client's response. Returns the request's outcome.
RelayOutcome relay_body_blocking(Exchange& exchange, ReplyBody& body);

}  // namespace llama_pool
