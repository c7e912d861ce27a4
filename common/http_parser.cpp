#include "common/http_parser.hpp"

#include <algorithm>
#include <cctype>
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

bool is_digit(char c) {
    return c >= '0' && c <= '9';
}

bool is_hex_digit(char c) {
    return std::isxdigit(static_cast<unsigned char>(c)) != 0;
}

bool is_unreserved_char(char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '-' || c == '.' || c == '_' ||
           c == '~';
}

bool is_sub_delim(char c) {
    return std::string_view("!$&'()*+,;=").find(c) != std::string_view::npos;
}

// IP-literal without its brackets (RFC 3986 §3.2.2): an IPv6 address (hex digits, colons,
// an embedded IPv4 tail) or "v" HEXDIG "." and then unreserved, sub-delims or colons.
bool valid_ip_literal(std::string_view l) {
    if (!l.empty() && (l.front() == 'v' || l.front() == 'V')) {
        const auto dot = l.find('.');
        if (dot == std::string_view::npos || dot < 2 || dot + 1 == l.size()) {
            return false;
        }
        return std::all_of(l.begin() + 1, l.begin() + static_cast<std::ptrdiff_t>(dot),
                           is_hex_digit) &&
               std::all_of(l.begin() + static_cast<std::ptrdiff_t>(dot) + 1, l.end(), [](char c) {
                   return is_unreserved_char(c) || is_sub_delim(c) || c == ':';
               });
    }
    return l.find(':') != std::string_view::npos && std::all_of(l.begin(), l.end(), [](char c) {
               return is_hex_digit(c) || c == ':' || c == '.';
           });
}

// uri-host [ ":" port ] (RFC 9110 §7.2 with RFC 3986 §3.2.2-3): the syntax of a Host value
// and of an absolute-form target's authority. Sets `host` to the part before the port. A
// userinfo ("user@") is refused: '@' is in neither production.
bool valid_host_port(std::string_view value, std::string_view& host) {
    std::string_view port;
    if (!value.empty() && value.front() == '[') {
        const auto close = value.find(']');
        if (close == std::string_view::npos || !valid_ip_literal(value.substr(1, close - 1))) {
            return false;
        }
        host = value.substr(0, close + 1);
        const auto rest = value.substr(close + 1);
        if (!rest.empty()) {
            if (rest.front() != ':') {
                return false;
            }
            port = rest.substr(1);
        }
    } else {
        // A reg-name or IPv4 address holds no ':', so the first one starts the port.
        const auto colon = value.find(':');
        host = value.substr(0, colon);
        port = colon == std::string_view::npos ? std::string_view{} : value.substr(colon + 1);
        for (std::size_t i = 0; i < host.size(); ++i) {
            if (host[i] == '%') {
                if (i + 2 >= host.size() || !is_hex_digit(host[i + 1]) ||
                    !is_hex_digit(host[i + 2])) {
                    return false;
                }
                i += 2;
            } else if (!is_unreserved_char(host[i]) && !is_sub_delim(host[i])) {
                return false;
            }
        }
    }
    return std::all_of(port.begin(), port.end(), is_digit);
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

// HTTP-version is "HTTP/" DIGIT "." DIGIT, case-sensitive (RFC 9112 §2.3). Returns 0 when
// it is 1.x (a minor version above 1 is read as 1.1, as §2.3 advises), 505 for another major
// version, 400 for anything that is not a version at all.
int parse_version(std::string_view v, int& minor) {
    const auto digit = [](char c) { return c >= '0' && c <= '9'; };
    if (v.size() != 8 || v.substr(0, 5) != "HTTP/" || !digit(v[5]) || v[6] != '.' || !digit(v[7])) {
        return 400;
    }
    if (v[5] != '1') {
        return 505;
    }
    minor = v[7] == '0' ? 0 : 1;
    return 0;
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

namespace {

// absolute-form (RFC 9112 §3.2.2): a server must accept it. The path and query become the
// origin-form target that routing and the worker see; the authority is returned to replace
// Host. Only http and https name something this pool serves; an http(s) URI with an empty
// host is invalid (RFC 9110 §4.2.1).
ParseResult parse_absolute_form(std::string_view target, std::string& origin,
                                std::string& authority) {
    const auto sep = target.find("://");
    const auto scheme = target.substr(0, sep);
    if (sep == std::string_view::npos || !(iequals(scheme, "http") || iequals(scheme, "https"))) {
        return fail(400, "request target must be an absolute path or an http(s) URI");
    }
    const auto rest = target.substr(sep + 3);
    const auto path_start = rest.find_first_of("/?");
    const auto auth = rest.substr(0, path_start);
    std::string_view host;
    if (!valid_host_port(auth, host) || host.empty()) {
        return fail(400, "invalid authority in the request target");
    }
    authority = std::string(auth);
    // Built, then moved in: GCC 12 at -O3 (the Docker image's build) reports a false
    // -Werror=restrict when a string literal is assigned or inserted here.
    std::string path(path_start == std::string_view::npos ? std::string_view{}
                                                          : rest.substr(path_start));
    if (path.empty() || path.front() == '?') {
        path.insert(path.begin(), '/');
    }
    origin = std::move(path);
    return {};
}

// The request line: method SP request-target SP HTTP-version, one space each (RFC 9112 §3).
// Fills method, origin-form target and version; `authority` is set for an absolute-form target.
ParseResult parse_request_line(std::string_view start, const HeadLimits& limits, HttpRequest& out,
                               std::string& authority) {
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
    if (target.empty()) {
        return fail(400, "request target must be an absolute path");
    }
    for (const char c : target) {
        const auto u = static_cast<unsigned char>(c);
        if (u <= 0x20 || u >= 0x7f) {
            return fail(400, "invalid character in request target");
        }
    }
    if (const auto v = parse_version(start.substr(sp2 + 1), out.version_minor); v != 0) {
        return fail(
            v, v == 505 ? "only HTTP/1.0 and HTTP/1.1 are supported" : "malformed HTTP version");
    }
    out.method = std::string(method);
    // The four target forms of RFC 9112 §3.2: authority-form belongs to CONNECT, which opens a
    // tunnel the pool does not offer; asterisk-form belongs to OPTIONS alone.
    if (method == "CONNECT") {
        return fail(501, "CONNECT is not supported");
    }
    if (target == "*" && method != "OPTIONS") {
        return fail(400, "the '*' request target is for OPTIONS only");
    }
    if (target == "*" || target.front() == '/') {
        out.target = std::string(target);
    } else if (auto r = parse_absolute_form(target, out.target, authority);
               r.status == ParseStatus::error) {
        return r;
    }
    return {};
}

// RFC 9112 §3.2: an HTTP/1.1 request without Host, any request with two Host lines or an
// invalid Host value is answered 400. HTTP/1.0 may omit it. With an absolute-form target the
// received Host is ignored and the target's authority takes its place (§3.2.2).
ParseResult check_host(HttpRequest& out, const std::string& authority) {
    const auto count = out.headers.count("Host");
    if (count > 1) {
        return fail(400, "more than one Host header field");
    }
    if (count == 0 && out.version_minor >= 1) {
        return fail(400, "an HTTP/1.1 request must have a Host header field");
    }
    std::string_view host;
    if (count == 1 && !valid_host_port(*out.headers.get("Host"), host)) {
        return fail(400, "invalid Host header field");
    }
    if (!authority.empty()) {
        out.headers.set("Host", authority);
    }
    return {};
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
    std::string authority;
    if (auto r = parse_request_line(lines.front(), limits, out, authority);
        r.status == ParseStatus::error) {
        return r;
    }
    if (auto r = parse_fields(lines, limits, out.headers); r.status == ParseStatus::error) {
        return r;
    }
    if (auto r = check_host(out, authority); r.status == ParseStatus::error) {
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
    if (sp1 == std::string_view::npos ||
        parse_version(start.substr(0, sp1), out.version_minor) != 0) {
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

// Transfer-Encoding, all its lines as one list (RFC 9112 §6.1). Only "chunked" alone is
// understood. When chunked is not the final coding the body's end cannot be found: a request
// is refused with 400 (§6.3 rule 4, a MUST); chunked after other codings is well framed but
// not understood, 501 (§6.1). Empty list elements are skipped (RFC 9110 §5.6.1).
FramingResult transfer_coding_framing(const Headers& headers, bool is_request) {
    std::vector<std::string_view> codings;
    std::string joined;
    for (const auto& [n, v] : headers.fields()) {
        if (!iequals(n, "Transfer-Encoding")) {
            continue;
        }
        joined += joined.empty() ? v : ", " + v;
        std::string_view rest = v;
        while (true) {
            const auto comma = rest.find(',');
            if (const auto coding = trim_ows(rest.substr(0, comma)); !coding.empty()) {
                codings.push_back(coding);
            }
            if (comma == std::string_view::npos) {
                break;
            }
            rest.remove_prefix(comma + 1);
        }
    }
    if (codings.empty() || !iequals(codings.back(), "chunked")) {
        return framing_error(is_request ? 400 : 502,
                             "chunked is not the final transfer coding in '" + joined + "'");
    }
    if (codings.size() > 1) {
        return framing_error(is_request ? 501 : 502,
                             "unsupported Transfer-Encoding '" + joined + "'");
    }
    FramingResult r;
    r.framing.kind = BodyFraming::Kind::chunked;
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
        return transfer_coding_framing(headers, is_request);
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

ResponseKind response_kind(int status) {
    if (status == 101) {
        return ResponseKind::unrequested_switch;
    }
    return status >= 100 && status < 200 ? ResponseKind::interim : ResponseKind::final_response;
}

FramingResult request_framing(const HttpRequest& request) {
    // HTTP/1.0 has no transfer codings: such a message's framing is faulty, Content-Length
    // or not (RFC 9112 §6.1, a MUST), so it is refused and the connection closed.
    if (request.version_minor == 0 && request.headers.has("Transfer-Encoding")) {
        return framing_error(400, "Transfer-Encoding in an HTTP/1.0 request");
    }
    return framing_from_headers(request.headers, true);
}

FramingResult response_framing(const HttpResponseHead& head, bool request_was_head) {
    if (request_was_head || head.status < 200 || head.status == 204 || head.status == 304) {
        return {};
    }
    if (head.version_minor == 0 && head.headers.has("Transfer-Encoding")) {
        return framing_error(502, "upstream: Transfer-Encoding in an HTTP/1.0 response");
    }
    return framing_from_headers(head.headers, false);
}

namespace {

void skip_bws(std::string_view& s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
        s.remove_prefix(1);
    }
}

bool take_token(std::string_view& s) {
    std::size_t n = 0;
    while (n < s.size() && is_tchar(s[n])) {
        ++n;
    }
    s.remove_prefix(n);
    return n > 0;
}

// token / quoted-string (RFC 9110 §5.6.2, §5.6.4), taken off the front of `s`.
bool take_token_or_quoted(std::string_view& s) {
    if (s.empty() || s.front() != '"') {
        return take_token(s);
    }
    const auto allowed = [](char c) {
        const auto u = static_cast<unsigned char>(c);
        return (u >= 0x20 || c == '\t') && u != 0x7f;
    };
    for (std::size_t i = 1; i < s.size(); ++i) {
        if (s[i] == '"') {
            s.remove_prefix(i + 1);
            return true;
        }
        if (s[i] == '\\') {
            ++i;  // quoted-pair: the escaped byte follows the same rule
        }
        if (i == s.size() || !allowed(s[i])) {
            return false;
        }
    }
    return false;
}

// chunk-size [ chunk-ext ] (RFC 9112 §7.1, §7.1.1), CRLF already removed. The size is hex
// digits from the first byte; extensions are checked against their grammar, then ignored (a
// recipient must ignore those it does not know). Whitespace is allowed only where the grammar
// has BWS, so a bare CR, a space before the size or a stray byte after it is refused rather
// than read the way one peer or another might read it. Returns why, or nullptr.
const char* parse_chunk_size_line(std::string_view line, std::size_t& size) {
    std::size_t digits = 0;
    while (digits < line.size() && is_hex_digit(line[digits])) {
        ++digits;
    }
    // 15 hex digits stay below 2^60: no overflow to guard against when adding lengths.
    if (digits == 0 || digits > 15 || !parse_size(line.substr(0, digits), size, 16)) {
        return "invalid chunk size";
    }
    auto rest = line.substr(digits);
    while (!rest.empty()) {
        skip_bws(rest);
        if (rest.empty() || rest.front() != ';') {
            return "invalid chunk size line";
        }
        rest.remove_prefix(1);
        skip_bws(rest);
        if (!take_token(rest)) {
            return "invalid chunk extension";
        }
        auto after_name = rest;
        skip_bws(after_name);
        if (!after_name.empty() && after_name.front() == '=') {
            after_name.remove_prefix(1);
            skip_bws(after_name);
            if (!take_token_or_quoted(after_name)) {
                return "invalid chunk extension";
            }
            rest = after_name;
        }
    }
    return nullptr;
}

// A trailer field line has the syntax of a header field line (RFC 9112 §7.1.2); it is then
// dropped, never merged into the header section.
const char* check_trailer_line(std::string_view line) {
    const auto colon = line.find(':');
    if (colon == std::string_view::npos || !is_token(line.substr(0, colon))) {
        return "invalid trailer field";
    }
    for (const char c : line.substr(colon + 1)) {
        const auto u = static_cast<unsigned char>(c);
        if ((u < 0x20 && c != '\t') || u == 0x7f) {
            return "control character in a trailer field";
        }
    }
    return nullptr;
}

}  // namespace

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
                std::size_t size = 0;
                if (const char* why = parse_chunk_size_line(line, size)) {
                    error_ = why;
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
                trailer_bytes_ += line.size() + 2;
                const char* why = last ? nullptr : check_trailer_line(line);
                if (why == nullptr && trailer_bytes_ > kMaxTrailerBytes) {
                    why = "trailer section too large";
                }
                line_.clear();
                if (why != nullptr) {
                    error_ = why;
                    state_ = State::failed;
                    return Status::error;
                }
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
