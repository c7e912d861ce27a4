#include "common/http_parser.hpp"

#include <charconv>
#include <vector>

namespace llama_pool {

namespace {

bool is_tchar(char c) {
    const auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u)) {
        return true;
    }
    switch (c) {
        case '!':
        case '#':
        case '$':
        case '%':
        case '&':
        case '\'':
        case '*':
        case '+':
        case '-':
        case '.':
        case '^':
        case '_':
        case '`':
        case '|':
        case '~':
            return true;
        default:
            return false;
    }
}

bool is_token(std::string_view s) {
    if (s.empty()) {
        return false;
    }
    for (const char c : s) {
        if (!is_tchar(c)) {
            return false;
        }
    }
    return true;
}

std::string_view trim_ows(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
        s.remove_prefix(1);
    }
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) {
        s.remove_suffix(1);
    }
    return s;
}

ParseResult fail(int status, std::string why) {
    ParseResult r;
    r.status = ParseStatus::error;
    r.error_status = status;
    r.error = std::move(why);
    return r;
}

// Splits the head into lines (CRLF or bare LF). Returns the offset just past the blank
// line, or npos while the head is incomplete.
std::size_t split_head(std::string_view buffer, std::vector<std::string_view>& lines) {
    std::size_t pos = 0;
    while (true) {
        const auto lf = buffer.find('\n', pos);
        if (lf == std::string_view::npos) {
            return std::string_view::npos;
        }
        auto line = buffer.substr(pos, lf - pos);
        if (!line.empty() && line.back() == '\r') {
            line.remove_suffix(1);
        }
        pos = lf + 1;
        if (line.empty()) {
            if (lines.empty()) {
                continue;  // RFC 9112 §2.2: ignore empty lines before the start line
            }
            return pos;
        }
        lines.push_back(line);
    }
}

ParseResult parse_fields(const std::vector<std::string_view>& lines, const HeadLimits& limits,
                         Headers& out) {
    if (lines.size() - 1 > limits.max_fields) {
        return fail(431, "too many header fields");
    }
    for (std::size_t i = 1; i < lines.size(); ++i) {
        const auto line = lines[i];
        if (line.size() > limits.max_line_bytes) {
            return fail(431, "header field too large");
        }
        if (line.front() == ' ' || line.front() == '\t') {
            return fail(400, "obsolete line folding is not accepted");
        }
        const auto colon = line.find(':');
        if (colon == std::string_view::npos) {
            return fail(400, "header line without a colon");
        }
        const auto name = line.substr(0, colon);
        if (!is_token(name)) {
            return fail(400, "invalid header field name");
        }
        const auto value = trim_ows(line.substr(colon + 1));
        for (const char c : value) {
            const auto u = static_cast<unsigned char>(c);
            if ((u < 0x20 && c != '\t') || u == 0x7f) {
                return fail(400, "control character in a header field value");
            }
        }
        out.add(std::string(name), std::string(value));
    }
    return {};
}

bool parse_version(std::string_view v, int& minor) {
    if (v == "HTTP/1.1") {
        minor = 1;
        return true;
    }
    if (v == "HTTP/1.0") {
        minor = 0;
        return true;
    }
    return false;
}

bool parse_size(std::string_view s, std::size_t& out, int base = 10) {
    if (s.empty()) {
        return false;
    }
    const auto* end = s.data() + s.size();
    const auto [ptr, ec] = std::from_chars(s.data(), end, out, base);
    return ec == std::errc() && ptr == end;
}

}  // namespace

ParseResult parse_request_head(std::string_view buffer, const HeadLimits& limits,
                               HttpRequest& out) {
    std::vector<std::string_view> lines;
    const auto end = split_head(buffer, lines);
    if (end == std::string_view::npos) {
        // Decide early for a client that keeps sending: the start line alone may be over.
        const auto first_lf = buffer.find('\n');
        // A CR at the very end may be the line's terminator whose LF has not arrived yet.
        const auto line_bytes = buffer.size() - (!buffer.empty() && buffer.back() == '\r' ? 1 : 0);
        if (first_lf == std::string_view::npos && line_bytes > limits.max_line_bytes) {
            return fail(414, "request line too long");
        }
        if (buffer.size() > limits.max_head_bytes) {
            return fail(431, "request header fields too large");
        }
        return {};
    }
    if (end > limits.max_head_bytes) {
        return fail(431, "request header fields too large");
    }
    const auto start = lines.front();
    if (start.size() > limits.max_line_bytes) {
        return fail(414, "request line too long");
    }
    const auto sp1 = start.find(' ');
    const auto sp2 = sp1 == std::string_view::npos ? sp1 : start.find(' ', sp1 + 1);
    if (sp2 == std::string_view::npos || start.find(' ', sp2 + 1) != std::string_view::npos) {
        return fail(400, "malformed request line");
    }
    const auto method = start.substr(0, sp1);
    const auto target = start.substr(sp1 + 1, sp2 - sp1 - 1);
    if (!is_token(method)) {
        return fail(400, "invalid method");
    }
    if (target.empty() || (target.front() != '/' && target != "*")) {
        return fail(400, "request target must be an absolute path");
    }
    for (const char c : target) {
        const auto u = static_cast<unsigned char>(c);
        if (u <= 0x20 || u >= 0x7f) {
            return fail(400, "invalid character in request target");
        }
    }
    if (!parse_version(start.substr(sp2 + 1), out.version_minor)) {
        return fail(505, "only HTTP/1.0 and HTTP/1.1 are supported");
    }
    out.method = std::string(method);
    out.target = std::string(target);
    if (auto r = parse_fields(lines, limits, out.headers); r.status == ParseStatus::error) {
        return r;
    }
    ParseResult ok;
    ok.status = ParseStatus::complete;
    ok.consumed = end;
    return ok;
}

ParseResult parse_response_head(std::string_view buffer, const HeadLimits& limits,
                                HttpResponseHead& out) {
    std::vector<std::string_view> lines;
    const auto end = split_head(buffer, lines);
    if (end == std::string_view::npos) {
        if (buffer.size() > limits.max_head_bytes) {
            return fail(502, "upstream response head too large");
        }
        return {};
    }
    if (end > limits.max_head_bytes) {
        return fail(502, "upstream response head too large");
    }
    const auto start = lines.front();
    const auto sp1 = start.find(' ');
    if (sp1 == std::string_view::npos || !parse_version(start.substr(0, sp1), out.version_minor)) {
        return fail(502, "malformed upstream status line");
    }
    auto rest = start.substr(sp1 + 1);
    const auto sp2 = rest.find(' ');
    const auto code = rest.substr(0, sp2);
    std::size_t status = 0;
    if (code.size() != 3 || !parse_size(code, status) || status < 100 || status > 599) {
        return fail(502, "malformed upstream status code");
    }
    out.status = static_cast<int>(status);
    out.reason = sp2 == std::string_view::npos ? std::string() : std::string(rest.substr(sp2 + 1));
    if (auto r = parse_fields(lines, limits, out.headers); r.status == ParseStatus::error) {
        r.error_status = 502;
        r.error = "upstream: " + r.error;
        return r;
    }
    ParseResult ok;
    ok.status = ParseStatus::complete;
    ok.consumed = end;
    return ok;
}

namespace {

FramingResult framing_error(int status, std::string why) {
    FramingResult r;
    r.error_status = status;
    r.error = std::move(why);
    return r;
}

// Shared by both directions: validates Transfer-Encoding and Content-Length together.
FramingResult framing_from_headers(const Headers& headers, bool is_request) {
    FramingResult r;
    const auto te_count = headers.count("Transfer-Encoding");
    const auto cl_count = headers.count("Content-Length");
    if (te_count > 0) {
        if (cl_count > 0 && is_request) {
            return framing_error(400, "both Content-Length and Transfer-Encoding are present");
        }
        // Only "chunked" as the one and final coding is understood.
        std::string joined;
        for (const auto& [n, v] : headers.fields()) {
            if (iequals(n, "Transfer-Encoding")) {
                joined += joined.empty() ? v : "," + v;
            }
        }
        if (!iequals(trim_ows(joined), "chunked")) {
            return framing_error(is_request ? 501 : 502,
                                 "unsupported Transfer-Encoding '" + joined + "'");
        }
        r.framing.kind = BodyFraming::Kind::chunked;
        return r;
    }
    if (cl_count > 0) {
        std::size_t length = 0;
        bool first = true;
        for (const auto& [n, v] : headers.fields()) {
            if (!iequals(n, "Content-Length")) {
                continue;
            }
            // A list form ("5, 5") is a duplicate too; all copies must agree exactly.
            std::string_view rest = v;
            while (true) {
                const auto comma = rest.find(',');
                std::size_t value = 0;
                if (!parse_size(trim_ows(rest.substr(0, comma)), value)) {
                    return framing_error(is_request ? 400 : 502, "invalid Content-Length");
                }
                if (!first && value != length) {
                    return framing_error(is_request ? 400 : 502, "conflicting Content-Length");
                }
                length = value;
                first = false;
                if (comma == std::string_view::npos) {
                    break;
                }
                rest.remove_prefix(comma + 1);
            }
        }
        r.framing.kind = length ? BodyFraming::Kind::length : BodyFraming::Kind::none;
        r.framing.length = length;
        return r;
    }
    r.framing.kind = is_request ? BodyFraming::Kind::none : BodyFraming::Kind::until_close;
    return r;
}

}  // namespace

FramingResult request_framing(const HttpRequest& request) {
    return framing_from_headers(request.headers, true);
}

FramingResult response_framing(const HttpResponseHead& head, bool request_was_head) {
    if (request_was_head || head.status < 200 || head.status == 204 || head.status == 304) {
        return {};
    }
    return framing_from_headers(head.headers, false);
}

ChunkedDecoder::Status ChunkedDecoder::feed(std::string_view in, std::size_t& consumed,
                                            std::string& out) {
    consumed = 0;
    auto take_line = [&](std::string_view& line) -> bool {
        while (consumed < in.size()) {
            const char c = in[consumed++];
            if (c == '\n') {
                line = line_;
                if (!line.empty() && line.back() == '\r') {
                    line.remove_suffix(1);
                }
                return true;
            }
            line_ += c;
            if (line_.size() > max_line_) {
                error_ = "chunk line too long";
                state_ = State::failed;
                return false;
            }
        }
        return false;
    };
    while (true) {
        switch (state_) {
            case State::failed:
                return Status::error;
            case State::done:
                return Status::done;
            case State::size_line: {
                std::string_view line;
                if (!take_line(line)) {
                    return state_ == State::failed ? Status::error : Status::need_more;
                }
                const auto semi = line.find(';');  // chunk extensions are ignored
                const auto hex = trim_ows(line.substr(0, semi));
                std::size_t size = 0;
                if (hex.empty() || hex.size() > 15 || !parse_size(hex, size, 16)) {
                    error_ = "invalid chunk size";
                    state_ = State::failed;
                    return Status::error;
                }
                line_.clear();
                remaining_ = size;
                state_ = size == 0 ? State::trailer_line : State::data;
                break;
            }
            case State::data: {
                const auto n = std::min(remaining_, in.size() - consumed);
                out.append(in.substr(consumed, n));
                consumed += n;
                remaining_ -= n;
                if (remaining_ > 0) {
                    return Status::need_more;
                }
                state_ = State::data_crlf;
                break;
            }
            case State::data_crlf: {
                // Exactly CRLF (or a bare LF) must follow the data; anything else means the
                // sender's framing and ours disagree, which is how smuggling starts.
                while (consumed < in.size()) {
                    const char c = in[consumed++];
                    if (c == '\n') {
                        line_.clear();
                        state_ = State::size_line;
                        break;
                    }
                    if (c != '\r' || !line_.empty()) {
                        error_ = "missing CRLF after chunk data";
                        state_ = State::failed;
                        return Status::error;
                    }
                    // push_back, not `line_ = "\r"`: GCC 12 at -O3 (the Docker image's Release
                    // build) reports a false -Werror=restrict on that assignment.
                    line_.push_back('\r');
                }
                if (state_ == State::data_crlf) {
                    return Status::need_more;
                }
                break;
            }
            case State::trailer_line: {
                std::string_view line;
                if (!take_line(line)) {
                    return state_ == State::failed ? Status::error : Status::need_more;
                }
                const bool last = line.empty();
                line_.clear();
                if (last) {
                    state_ = State::done;
                    return Status::done;
                }
                break;
            }
        }
    }
}

int hex_digit_value(char c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

namespace {

bool is_unreserved(unsigned char c) {
    return std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

// Decodes the percent-encoded unreserved characters of a path (RFC 3986 §6.2.2.2: "%2e" is
// "."), so that the pool routes on the same path the worker will see after decoding. Other
// escapes stay as they are ("%2F" must not become a segment boundary). False for an encoded
// control character: no API path has one, and a worker would decode it into its path.
bool decode_unreserved(std::string_view path, std::string& out) {
    out.clear();
    for (std::size_t i = 0; i < path.size(); ++i) {
        const bool escape = path[i] == '%' && i + 2 < path.size() &&
                            hex_digit_value(path[i + 1]) >= 0 && hex_digit_value(path[i + 2]) >= 0;
        if (!escape) {
            out += path[i];
            continue;
        }
        const auto c = static_cast<unsigned char>(hex_digit_value(path[i + 1]) * 16 +
                                                  hex_digit_value(path[i + 2]));
        if (c < 0x20 || c == 0x7f) {
            return false;
        }
        // A decoded hex digit must not complete an escape with what precedes it ("%%32e"
        // would become "%2e"): decoding again would then give a different path.
        const bool would_form_escape =
            hex_digit_value(static_cast<char>(c)) >= 0 &&
            ((!out.empty() && out.back() == '%') ||
             (out.size() >= 2 && out[out.size() - 2] == '%' && hex_digit_value(out.back()) >= 0));
        if (is_unreserved(c) && !would_form_escape) {
            out += static_cast<char>(c);
        } else {
            out.append(path.substr(i, 3));
        }
        i += 2;
    }
    return true;
}

}  // namespace

bool normalize_target(std::string_view target, std::string& out) {
    if (target.empty() || target.front() != '/') {
        return false;
    }
    const auto q = target.find('?');
    std::string decoded;
    if (!decode_unreserved(target.substr(0, q), decoded)) {
        return false;
    }
    const std::string_view path = decoded;
    std::vector<std::string_view> segments;
    std::size_t pos = 1;
    while (pos <= path.size()) {
        auto slash = path.find('/', pos);
        if (slash == std::string_view::npos) {
            slash = path.size();
        }
        const auto seg = path.substr(pos, slash - pos);
        if (seg == "..") {
            if (!segments.empty()) {
                segments.pop_back();
            }
        } else if (!seg.empty() && seg != ".") {
            segments.push_back(seg);
        }
        pos = slash + 1;
    }
    out.clear();
    for (const auto seg : segments) {
        out += '/';
        out += seg;
    }
    const bool trailing_slash = path.size() > 1 && path.back() == '/' && !segments.empty();
    if (out.empty() || trailing_slash) {
        out += '/';
    }
    if (q != std::string_view::npos) {
        out += target.substr(q);
    }
    return true;
}

}  // namespace llama_pool
