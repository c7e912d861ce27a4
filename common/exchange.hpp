#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "common/http_message.hpp"
#include "common/socket.hpp"

namespace llama_pool {

// One request and the means to answer it. The HTTP server's connections implement it, and
// so do in-process callers (summarization chunks, the response cache's recorder, coalesced
// followers), which is what lets them share the relay's admission, retry and breaker path.
// The answer is either respond() or begin()/write()/finish() for a streamed body.
class Exchange {
  public:
    virtual ~Exchange() = default;

    virtual const HttpRequest& request() const = 0;
    virtual const std::string& remote_address() const = 0;

    virtual bool respond(int status, Headers headers, std::string_view body) = 0;
    // With no content length the body is streamed (chunked on the wire).
    virtual bool begin(int status, Headers headers, std::optional<std::size_t> content_length) = 0;
    virtual bool write(std::string_view data) = 0;
    virtual bool finish() = 0;
    // Ends the exchange without completing the body: the receiver sees a truncated response
    // rather than a silently corrupted one.
    virtual void abort() = 0;

    virtual bool responded() const = 0;
    virtual int response_status() const = 0;
    // The requester is gone (client hang-up, job cancelled): stop working for it.
    virtual bool client_gone() const = 0;
    // Watch set for blocking operations done on behalf of this exchange; a blocking call
    // returns early when either fd signals (see IoWatch).
    virtual IoWatch watch() const = 0;
};

}  // namespace llama_pool
