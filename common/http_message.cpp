#include "common/http_message.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>

namespace llama_pool {

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) ==
                      std::tolower(static_cast<unsigned char>(y));
           });
}

namespace {

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
        s.remove_prefix(1);
    }
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) {
        s.remove_suffix(1);
    }
    return s;
}

}  // namespace

bool header_has_token(std::string_view value, std::string_view token) {
    while (!value.empty()) {
        const auto comma = value.find(',');
        if (iequals(trim(value.substr(0, comma)), token)) {
            return true;
        }
        if (comma == std::string_view::npos) {
            break;
        }
        value.remove_prefix(comma + 1);
    }
    return false;
}

void Headers::set(std::string_view name, std::string value) {
    remove(name);
    fields_.emplace_back(std::string(name), std::move(value));
}

void Headers::remove(std::string_view name) {
    std::erase_if(fields_, [&](const Field& f) { return iequals(f.first, name); });
}

std::optional<std::string_view> Headers::get(std::string_view name) const {
    for (const auto& f : fields_) {
        if (iequals(f.first, name)) {
            return std::string_view(f.second);
        }
    }
    return std::nullopt;
}

std::size_t Headers::count(std::string_view name) const {
    return static_cast<std::size_t>(std::count_if(
        fields_.begin(), fields_.end(), [&](const Field& f) { return iequals(f.first, name); }));
}

std::string_view HttpRequest::path() const {
    std::string_view t = target;
    return t.substr(0, t.find('?'));
}

std::string_view HttpRequest::query() const {
    std::string_view t = target;
    const auto q = t.find('?');
    return q == std::string_view::npos ? std::string_view{} : t.substr(q + 1);
}

bool HttpRequest::keep_alive() const {
    const auto connection = headers.get("Connection");
    if (version_minor == 0) {
        return connection && header_has_token(*connection, "keep-alive");
    }
    return !(connection && header_has_token(*connection, "close"));
}

std::optional<std::uint64_t> max_forwards(const Headers& headers) {
    const auto value = headers.get("Max-Forwards");
    if (!value) {
        return std::nullopt;
    }
    const auto v = trim(*value);
    std::uint64_t hops = 0;
    const auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), hops);
    if (v.empty() || ec != std::errc() || ptr != v.data() + v.size()) {
        return std::nullopt;
    }
    return hops;
}

const char* reason_phrase(int status) {
    switch (status) {
        case 100:
            return "Continue";
        case 200:
            return "OK";
        case 201:
            return "Created";
        case 202:
            return "Accepted";
        case 204:
            return "No Content";
        case 400:
            return "Bad Request";
        case 401:
            return "Unauthorized";
        case 403:
            return "Forbidden";
        case 404:
            return "Not Found";
        case 405:
            return "Method Not Allowed";
        case 408:
            return "Request Timeout";
        case 409:
            return "Conflict";
        case 411:
            return "Length Required";
        case 413:
            return "Content Too Large";
        case 414:
            return "URI Too Long";
        case 417:
            return "Expectation Failed";
        case 422:
            return "Unprocessable Content";
        case 429:
            return "Too Many Requests";
        case 431:
            return "Request Header Fields Too Large";
        case 500:
            return "Internal Server Error";
        case 501:
            return "Not Implemented";
        case 502:
            return "Bad Gateway";
        case 503:
            return "Service Unavailable";
        case 504:
            return "Gateway Timeout";
        case 505:
            return "HTTP Version Not Supported";
        default:
            return "Unknown";
    }
}

bool is_hop_by_hop(std::string_view name, const Headers& headers) {
    static constexpr std::array<std::string_view, 9> fixed = {"Connection",
                                                              "Keep-Alive",
                                                              "Proxy-Connection",
                                                              "TE",
                                                              "Trailer",
                                                              "Transfer-Encoding",
                                                              "Upgrade",
                                                              "Proxy-Authenticate",
                                                              "Proxy-Authorization"};
    for (const auto h : fixed) {
        if (iequals(name, h)) {
            return true;
        }
    }
    for (const auto& [n, v] : headers.fields()) {
        if (iequals(n, "Connection") && header_has_token(v, name)) {
            return true;
        }
    }
    return false;
}

}  // namespace llama_pool
