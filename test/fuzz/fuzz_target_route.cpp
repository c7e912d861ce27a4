// Path normalization and routing: ProxyServer::handle normalizes every request target, routes
// on the normalized path (pool routes and their admin key, /metrics, or the relay), labels
// the request's metrics with route_label and forwards the normalized target to a worker. A
// target that normalizes to something still holding "." or ".." segments or empty segments
// could reach a route the client was not meant to, or split metrics into unbounded series.
// The request id is the other client-chosen string that lands in headers and logs.

#include <cctype>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/http_parser.hpp"
#include "proxy/pool_metrics.hpp"
#include "proxy/request_id.hpp"
#include "test/fuzz/fuzz_support.hpp"

using namespace llama_pool;

namespace {

int hex(char c) {
    const auto p = std::string_view("0123456789abcdef")
                       .find(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
    return p == std::string_view::npos ? -1 : static_cast<int>(p);
}

struct Escape {
    unsigned char byte;  // what "%XX" stands for
    std::size_t at;      // where the '%' is
};

// The "%XX" escapes of `path`, in order.
std::vector<Escape> escapes(std::string_view path) {
    std::vector<Escape> out;
    for (std::size_t i = 0; i + 2 < path.size(); ++i) {
        if (path[i] == '%' && hex(path[i + 1]) >= 0 && hex(path[i + 2]) >= 0) {
            out.push_back(
                {static_cast<unsigned char>(hex(path[i + 1]) * 16 + hex(path[i + 2])), i});
            i += 2;
        }
    }
    return out;
}

// Decoding this escape would join what precedes it into a new escape ("%%32" -> "%2",
// "%2%33" -> "%23"): then it must stay encoded.
bool decoding_forms_escape(std::string_view path, const Escape& e) {
    if (hex(static_cast<char>(e.byte)) < 0) {
        return false;
    }
    return (e.at >= 1 && path[e.at - 1] == '%') ||
           (e.at >= 2 && path[e.at - 2] == '%' && hex(path[e.at - 1]) >= 0);
}

void check_normalized_path(std::string_view path) {
    FUZZ_CHECK(!path.empty() && path.front() == '/');
    FUZZ_CHECK(path.find("//") == std::string_view::npos);
    // What a worker decodes is what the pool routed on: no escape of an unreserved character
    // ("%2e" would turn into a dot segment there) or of a control character is left.
    for (const auto& e : escapes(path)) {
        const auto c = e.byte;
        if (!decoding_forms_escape(path, e)) {
            FUZZ_CHECK(!(std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~'));
        }
        FUZZ_CHECK(c >= 0x20 && c != 0x7f);
    }
    // Every segment between slashes is a real name: not empty (but for a trailing slash),
    // not "." and not "..".
    std::size_t pos = 1;
    while (pos < path.size()) {
        auto slash = path.find('/', pos);
        if (slash == std::string_view::npos) {
            slash = path.size();
        }
        const auto segment = path.substr(pos, slash - pos);
        FUZZ_CHECK(segment != "." && segment != "..");
        FUZZ_CHECK(!segment.empty());
        pos = slash + 1;
    }
}

void check_route(std::string_view path) {
    const auto label = route_label(path);
    // Bounded cardinality: a route label is the path itself (a known route), or a fixed
    // prefix's label (/pool/*, /v1/jobs/{id}), or the catch-all; never something else the
    // client made up.
    FUZZ_CHECK(label == path || label == "/pool" || label == "/v1/jobs" || label == "other");
    if (label == "/pool") {
        FUZZ_CHECK(path.rfind("/pool", 0) == 0);
    }
    if (label == "/v1/jobs") {
        FUZZ_CHECK(path.rfind("/v1/jobs", 0) == 0);
    }
    if (label == path) {
        FUZZ_CHECK(path.size() <= 32);
        FUZZ_CHECK(path.find_first_of("?%") == std::string_view::npos);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto target = fuzz::as_text(data, size);

    std::string normalized;
    const bool ok = normalize_target(target, normalized);
    const bool origin_form = !target.empty() && target.front() == '/';
    bool encoded_control = false;
    for (const auto& e : escapes(target.substr(0, target.find('?')))) {
        encoded_control = encoded_control || e.byte < 0x20 || e.byte == 0x7f;
    }
    FUZZ_CHECK(ok == (origin_form && !encoded_control));
    if (ok) {
        const auto q_in = target.find('?');
        const auto q_out = normalized.find('?');
        FUZZ_CHECK((q_in == std::string_view::npos) == (q_out == std::string::npos));
        if (q_in != std::string_view::npos) {
            // The query is the client's and is passed on byte for byte.
            FUZZ_CHECK(std::string_view(normalized).substr(q_out) == target.substr(q_in));
        }
        const auto path = std::string_view(normalized).substr(0, q_out);
        check_normalized_path(path);
        FUZZ_CHECK(normalized.size() <= target.size());

        // Normalizing twice changes nothing: the relay and the routes agree on the path.
        std::string twice;
        FUZZ_CHECK(normalize_target(normalized, twice));
        FUZZ_CHECK(twice == normalized);

        check_route(path);
    }
    check_route(target);

    // The request id: kept when acceptable, replaced otherwise; always safe to echo.
    const auto kept = RequestIds(0).for_request(target);
    FUZZ_CHECK(is_acceptable_request_id(kept));
    if (is_acceptable_request_id(target)) {
        FUZZ_CHECK(kept == target);
    } else {
        FUZZ_CHECK(kept != target);
    }
    for (const char c : kept) {
        FUZZ_CHECK(c != '\r' && c != '\n' && c != '"' && c != ' ');
    }
    FUZZ_CHECK(is_acceptable_request_id(RequestIds(0).for_request(std::nullopt)));
    return 0;
}
