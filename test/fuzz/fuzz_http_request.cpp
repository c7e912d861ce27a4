// What the server does with a client's bytes before a handler runs (HttpServer::read_request,
// without the socket): the head, the framing decision that stops request smuggling, the body
// (length or chunked), then the next pipelined request; and what the proxy does first with
// every request (target normalization, request id, keep-alive, hop-by-hop fields).

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/http_parser.hpp"
#include "proxy/pool_metrics.hpp"
#include "proxy/request_id.hpp"
#include "test/fuzz/fuzz_support.hpp"

using namespace llama_pool;

namespace {

bool same_head(const HttpRequest& a, const HttpRequest& b) {
    return a.method == b.method && a.target == b.target && a.version_minor == b.version_minor &&
           a.headers.fields() == b.headers.fields();
}

bool is_error_status(int status) {
    return status == 400 || status == 414 || status == 431 || status == 501 || status == 505;
}

// Nothing that reaches a handler (and from there a worker, a log line or a response
// header) may carry a line break or a control byte: that is header injection.
void check_request_contents(const HttpRequest& request) {
    FUZZ_CHECK(!request.method.empty());
    FUZZ_CHECK(!request.target.empty());
    // RFC 9112 §3.2: one Host in HTTP/1.1, never two; only origin-form or OPTIONS "*" reaches
    // a handler (an absolute-form target was rewritten), and never CONNECT.
    const auto hosts = request.headers.count("Host");
    FUZZ_CHECK(hosts <= 1 && (hosts == 1 || request.version_minor == 0));
    FUZZ_CHECK(request.target.front() == '/' ||
               (request.target == "*" && request.method == "OPTIONS"));
    FUZZ_CHECK(request.method != "CONNECT");
    for (const char c : request.target) {
        const auto u = static_cast<unsigned char>(c);
        FUZZ_CHECK(u > 0x20 && u < 0x7f);
    }
    for (const auto& [name, value] : request.headers.fields()) {
        FUZZ_CHECK(!name.empty());
        FUZZ_CHECK(name.find_first_of(" \t\r\n:") == std::string::npos);
        for (const char c : value) {
            const auto u = static_cast<unsigned char>(c);
            FUZZ_CHECK((u >= 0x20 || c == '\t') && u != 0x7f);
        }
        FUZZ_CHECK(value.empty() || (value.front() != ' ' && value.back() != ' '));
        is_hop_by_hop(name, request.headers);
    }
    FUZZ_CHECK(is_hop_by_hop("Connection", request.headers));
    FUZZ_CHECK(is_hop_by_hop("transfer-encoding", request.headers));

    // path() and query() are the two halves of the target around the first '?'.
    const auto path = request.path();
    const auto query = request.query();
    const auto q = request.target.find('?');
    FUZZ_CHECK(path == std::string_view(request.target).substr(0, q));
    FUZZ_CHECK(q == std::string::npos ? query.empty()
                                      : query == std::string_view(request.target).substr(q + 1));
    static_cast<void>(request.keep_alive());

    const auto id = RequestIds(0).for_request(request.headers.get("X-Request-Id"));
    FUZZ_CHECK(is_acceptable_request_id(id));

    std::string normalized;
    if (normalize_target(request.target, normalized)) {
        FUZZ_CHECK(!normalized.empty() && normalized.front() == '/');
        FUZZ_CHECK(!route_label(normalized.substr(0, normalized.find('?'))).empty());
    } else {
        // Refused: not origin-form ("*"), or a path with an encoded control character, which
        // the proxy answers with 400 before routing.
        const auto path = std::string_view(request.target).substr(0, request.target.find('?'));
        bool encoded_control = false;
        for (std::size_t i = 0; i + 2 < path.size(); ++i) {
            const auto digit = [](char c) {
                return std::isxdigit(static_cast<unsigned char>(c)) != 0;
            };
            if (path[i] == '%' && digit(path[i + 1]) && digit(path[i + 2])) {
                const auto c = std::stoi(std::string(path.substr(i + 1, 2)), nullptr, 16);
                encoded_control = encoded_control || c < 0x20 || c == 0x7f;
                i += 2;
            }
        }
        FUZZ_CHECK(request.target.front() != '/' || encoded_control);
    }
}

// Content-Length and Transfer-Encoding together, or lengths that disagree, must be refused:
// a worker that frames the body differently would read the rest as a second request.
void check_framing(const HttpRequest& request, const FramingResult& framing) {
    const auto te = request.headers.count("Transfer-Encoding");
    const auto cl = request.headers.count("Content-Length");
    if (framing.error_status != 0) {
        FUZZ_CHECK(framing.error_status == 400 || framing.error_status == 501);
        FUZZ_CHECK(!framing.error.empty());
        return;
    }
    FUZZ_CHECK(!(te > 0 && cl > 0));
    switch (framing.framing.kind) {
        case BodyFraming::Kind::none:
            FUZZ_CHECK(te == 0);
            FUZZ_CHECK(framing.framing.length == 0);
            break;
        case BodyFraming::Kind::length:
            FUZZ_CHECK(te == 0 && cl > 0);
            FUZZ_CHECK(framing.framing.length > 0);
            break;
        case BodyFraming::Kind::chunked:
            FUZZ_CHECK(te > 0 && cl == 0);
            break;
        case BodyFraming::Kind::until_close:
            FUZZ_CHECK(!"a request body is never framed by the end of the connection");
            break;
    }
}

// The server parses the buffer again each time bytes arrive. Whatever the segmentation,
// a head that is complete as a whole must not be refused on one of its prefixes.
void check_prefixes(std::string_view buffer, std::size_t consumed, const HeadLimits& limits) {
    const auto first_lf = buffer.find('\n');
    for (const auto end : {first_lf, consumed - 1, consumed / 2}) {
        if (end >= consumed) {
            continue;
        }
        HttpRequest partial;
        const auto r = parse_request_head(buffer.substr(0, end), limits, partial);
        FUZZ_CHECK(r.status == ParseStatus::incomplete);
        FUZZ_CHECK(r.consumed == 0);
    }
}

// Limits set exactly at the sizes this head has: the limits are inclusive maxima, so the
// head must still be complete, and must be so on every prefix as well.
HeadLimits boundary_limits(std::string_view head, const HttpRequest& request) {
    HeadLimits limits;
    limits.max_head_bytes = head.size();
    limits.max_fields = request.headers.fields().size();
    std::size_t longest = 0;
    std::size_t pos = 0;
    while (pos < head.size()) {
        auto lf = head.find('\n', pos);
        if (lf == std::string_view::npos) {
            lf = head.size();
        }
        auto line = head.substr(pos, lf - pos);
        if (!line.empty() && line.back() == '\r') {
            line.remove_suffix(1);
        }
        longest = std::max(longest, line.size());
        pos = lf + 1;
    }
    limits.max_line_bytes = longest;
    return limits;
}

void check_head(std::string_view buffer, const ParseResult& r, const HttpRequest& request,
                const HeadLimits& limits) {
    FUZZ_CHECK(r.consumed > 0 && r.consumed <= buffer.size());
    FUZZ_CHECK(buffer[r.consumed - 1] == '\n');
    const auto head = buffer.substr(0, r.consumed);

    // The head alone parses to the same request: nothing after it was looked at.
    HttpRequest again;
    const auto r2 = parse_request_head(head, limits, again);
    FUZZ_CHECK(r2.status == ParseStatus::complete);
    FUZZ_CHECK(r2.consumed == r.consumed);
    FUZZ_CHECK(same_head(request, again));

    check_prefixes(buffer, r.consumed, limits);

    const auto tight = boundary_limits(head, request);
    HttpRequest at_limits;
    const auto r3 = parse_request_head(head, tight, at_limits);
    FUZZ_CHECK(r3.status == ParseStatus::complete);
    FUZZ_CHECK(same_head(request, at_limits));
    check_prefixes(buffer, r.consumed, tight);

    // One byte under the head limit must be refused, never read as a shorter head.
    if (tight.max_head_bytes > 1) {
        auto under = tight;
        --under.max_head_bytes;
        HttpRequest refused;
        const auto r4 = parse_request_head(head, under, refused);
        FUZZ_CHECK(r4.status == ParseStatus::error && r4.error_status == 431);
    }
}

// Reads requests off the buffer one after another, as one keep-alive connection would.
void read_pipeline(std::string_view buffer, const HeadLimits& limits) {
    for (int n = 0; n < 8 && !buffer.empty(); ++n) {
        HttpRequest request;
        const auto r = parse_request_head(buffer, limits, request);
        FUZZ_CHECK(r.consumed <= buffer.size());
        if (r.status == ParseStatus::incomplete) {
            FUZZ_CHECK(r.consumed == 0);
            return;
        }
        if (r.status == ParseStatus::error) {
            FUZZ_CHECK(r.consumed == 0);
            FUZZ_CHECK(is_error_status(r.error_status));
            FUZZ_CHECK(!r.error.empty());
            return;
        }
        check_head(buffer, r, request, limits);
        check_request_contents(request);
        buffer.remove_prefix(r.consumed);

        const auto framing = request_framing(request);
        check_framing(request, framing);
        if (framing.error_status != 0) {
            return;
        }
        if (framing.framing.kind == BodyFraming::Kind::length) {
            if (buffer.size() < framing.framing.length) {
                return;
            }
            buffer.remove_prefix(framing.framing.length);
        } else if (framing.framing.kind == BodyFraming::Kind::chunked) {
            ChunkedDecoder decoder;
            std::size_t used = 0;
            std::string body;
            const auto st = decoder.feed(buffer, used, body);
            FUZZ_CHECK(used <= buffer.size());
            FUZZ_CHECK(body.size() <= used);
            if (st != ChunkedDecoder::Status::done) {
                FUZZ_CHECK(st == ChunkedDecoder::Status::error || used == buffer.size());
                return;
            }
            buffer.remove_prefix(used);
        }
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto input = fuzz::as_text(data, size);
    read_pipeline(input, HeadLimits{});
    // Small limits, so that the 414 and 431 paths are reached with short inputs too.
    const auto h = fuzz::input_hash(input);
    HeadLimits small;
    small.max_head_bytes = 16 + h % 512;
    small.max_line_bytes = 8 + (h >> 16) % 256;
    small.max_fields = (h >> 32) % 12;
    read_pipeline(input, small);
    return 0;
}
