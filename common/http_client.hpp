#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/clock.hpp"
#include "common/http_message.hpp"
#include "common/http_parser.hpp"
#include "common/socket.hpp"

namespace llama_pool {

// One client-side HTTP/1.1 connection: send a request, read the response head, then the
// body piece by piece as it arrives (a chunked body yields each chunk as soon as it is
// decoded, so SSE events pass through one by one). Every blocking step takes a deadline and
// an IoWatch, so a relay can abort the moment its client hangs up. Not thread-safe.
class HttpClientConnection {
  public:
    HttpClientConnection() = default;
    explicit HttpClientConnection(Fd fd) : fd_(std::move(fd)) {}

    static HttpClientConnection connect(const std::string& host, std::uint16_t port,
                                        TimePoint deadline, std::string& error);

    bool connected() const { return fd_.valid(); }
    int fd() const { return fd_.get(); }

    // `headers` must not carry framing fields; Content-Length is added for the body.
    IoStatus send_request(std::string_view method, std::string_view target,
                          std::string_view host_header, const Headers& headers,
                          std::string_view body, TimePoint deadline, const IoWatch& watch = {});
    // On a malformed head returns IoStatus::error with `error` set.
    IoStatus read_head(HttpResponseHead& head, bool request_was_head, TimePoint deadline,
                       std::string& error, const IoWatch& watch = {});
    // Appends the next available piece of the body to `out`; sets `done` at its end.
    IoStatus read_body(std::string& out, bool& done, TimePoint deadline, std::string& error,
                       const IoWatch& watch = {});

    // read_body() without waiting, for a socket the caller knows to be readable (an event
    // loop): IoStatus::timeout when no further piece can be decoded from what has arrived.
    IoStatus read_body_now(std::string& out, bool& done, std::string& error);
    // The next piece after read_body_now() in the same wake-up: a read shorter than the buffer
    // emptied the socket, so once what arrived is decoded this says timeout without another
    // system call (the event loop's level-triggered re-arm reports bytes that come later).
    IoStatus read_body_more(std::string& out, bool& done, std::string& error);
    // read_head() likewise: IoStatus::timeout while the head is not whole yet (what arrived
    // is kept for the next call; `error` then says what a deadline passing now would mean).
    IoStatus read_head_now(HttpResponseHead& head, bool request_was_head, std::string& error);

    // True when the last response was read completely and both sides allow keep-alive.
    bool reusable() const { return reusable_; }
    // An idle pooled connection the server closed (or sent garbage on) must not be reused.
    bool stale() const;

  private:
    IoStatus fill(TimePoint deadline, const IoWatch& watch);

    Fd fd_;
    std::string buffer_;
    BodyFraming framing_;
    std::size_t remaining_ = 0;
    ChunkedDecoder decoder_;
    bool keep_alive_ = false;
    bool reusable_ = false;
    bool body_done_ = true;
    // The last read emptied the socket (or a request was just sent): the next one waits
    // before reading.
    bool drained_ = true;
};

// The Host value for a request sent to host:port (RFC 9110 §7.2). Every request the pool
// sends carries one (RFC 9112 §3.2 lets a server refuse an HTTP/1.1 request without it); an
// IPv6 address goes in brackets, since "::1:8080" is no valid Host.
std::string host_header_for(std::string_view host, std::uint16_t port);

// A whole request/response exchange on a fresh connection, for probes, admin calls and
// tests. `status` is 0 when no response head arrived; `error` then says why.
struct FetchResult {
    int status = 0;
    Headers headers;
    std::string body;
    std::string error;
    IoStatus io = IoStatus::ok;
};

FetchResult http_fetch(const std::string& host, std::uint16_t port, std::string_view method,
                       std::string_view target, const Headers& headers, std::string_view body,
                       milliseconds timeout, std::size_t max_body_bytes = 16 * 1024 * 1024,
                       const IoWatch& watch = {});

}  // namespace llama_pool
