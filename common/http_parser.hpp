#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "common/http_message.hpp"

namespace llama_pool {

// Pure HTTP/1.1 parsing: no sockets, no allocation beyond the output, so it is unit-tested
// and fuzzed directly. It is strict where leniency enables request smuggling (RFC 9112
// §6.1, §6.3, §5.2) and lenient where real peers differ harmlessly (bare LF line ends).

enum class ParseStatus { incomplete, complete, error };

struct ParseResult {
    ParseStatus status = ParseStatus::incomplete;
    std::size_t consumed = 0;  // bytes of the head, including the blank line
    int error_status = 0;      // the HTTP status to answer with (400, 414, 431, 505, 501)
    std::string error;         // why, for the error body and the log
};

struct HeadLimits {
    std::size_t max_head_bytes = 16 * 1024;
    std::size_t max_line_bytes = 8 * 1024;
    std::size_t max_fields = 100;
};

// Also holds the request line to RFC 9112 §3: one space between its parts, a version of the
// form HTTP/d.d (1.x accepted, another major 505), an origin-form target, "*" for OPTIONS
// only, an http(s) absolute-form target rewritten to origin-form with its authority as Host,
// CONNECT refused (501); and Host to §3.2: one in HTTP/1.1, never two, always valid.
ParseResult parse_request_head(std::string_view buffer, const HeadLimits& limits, HttpRequest& out);
ParseResult parse_response_head(std::string_view buffer, const HeadLimits& limits,
                                HttpResponseHead& out);

// What a client makes of a response head by its status (RFC 9110 §15.2): any 1xx is interim,
// asked for or not, and is read past to the final response; 101 would switch the connection
// to another protocol, which the pool never asks a worker for (it forwards no Upgrade), so it
// ends the exchange as a broken reply.
enum class ResponseKind { final_response, interim, unrequested_switch };
ResponseKind response_kind(int status);

struct BodyFraming {
    enum class Kind { none, length, chunked, until_close };
    Kind kind = Kind::none;
    std::size_t length = 0;
};

struct FramingResult {
    BodyFraming framing;
    int error_status = 0;  // 0 when valid
    std::string error;
};

// Requests: Content-Length together with Transfer-Encoding, differing Content-Lengths, a
// non-numeric length, a coding list whose final coding is not "chunked" (400) or holds
// others before it (501), and Transfer-Encoding in HTTP/1.0 are refused, not guessed.
FramingResult request_framing(const HttpRequest& request);
// Responses to HEAD, 1xx, 204 and 304 have no body; otherwise chunked, length or close.
FramingResult response_framing(const HttpResponseHead& head, bool request_was_head);

// Incremental chunked-coding decoder. Feed it whatever bytes arrived; it appends the
// decoded payload to `out` and reports how many input bytes it used. Size lines and chunk
// extensions are held to their grammar (extensions are then ignored); trailers are checked
// as field lines, bounded in total, and dropped.
class ChunkedDecoder {
  public:
    enum class Status { need_more, done, error };

    explicit ChunkedDecoder(std::size_t max_line_bytes = 4096) : max_line_(max_line_bytes) {}
    Status feed(std::string_view in, std::size_t& consumed, std::string& out);
    const std::string& error() const { return error_; }

  private:
    enum class State { size_line, data, data_crlf, trailer_line, done, failed };
    State state_ = State::size_line;
    // Trailer fields are dropped, so their total is bounded like a head's, not kept.
    static constexpr std::size_t kMaxTrailerBytes = 16 * 1024;
    std::size_t remaining_ = 0;
    std::size_t trailer_bytes_ = 0;
    std::string line_;
    std::size_t max_line_;
    std::string error_;
};

// 0..15 for a hexadecimal digit, -1 for anything else.
int hex_digit_value(char c);

// Normalizes the path part of a target (the query is kept verbatim): decodes percent-encoded
// unreserved characters ("%2e" is "."), collapses repeated slashes and resolves "." and ".."
// segments, so that routing sees the same path a worker will. Returns false for targets that
// are not origin-form and for paths with an encoded control character ("%00").
bool normalize_target(std::string_view target, std::string& out);

}  // namespace llama_pool
