#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace llama_pool {

// Header fields in arrival order; names compare case-insensitively (RFC 9110 §5.1).
class Headers {
  public:
    using Field = std::pair<std::string, std::string>;

    void add(std::string name, std::string value) {
        fields_.emplace_back(std::move(name), std::move(value));
    }
    // Replaces every field of that name with one.
    void set(std::string_view name, std::string value);
    void remove(std::string_view name);
    std::optional<std::string_view> get(std::string_view name) const;
    std::size_t count(std::string_view name) const;
    bool has(std::string_view name) const { return count(name) > 0; }

    const std::vector<Field>& fields() const { return fields_; }
    bool empty() const { return fields_.empty(); }

  private:
    std::vector<Field> fields_;
};

bool iequals(std::string_view a, std::string_view b);
// True when the comma-separated header value lists `token` (case-insensitive).
bool header_has_token(std::string_view value, std::string_view token);

struct HttpRequest {
    std::string method;
    // Path plus optional query as received, or "*" (OPTIONS). An absolute-form target arrives
    // here as its path and query, its authority in Host (RFC 9112 §3.2.2).
    std::string target;
    int version_minor = 1;
    Headers headers;
    std::string body;  // fully read and de-chunked before the handler runs

    std::string_view path() const;
    std::string_view query() const;  // without '?', empty when absent
    bool keep_alive() const;
};

struct HttpResponseHead {
    int status = 0;
    std::string reason;
    int version_minor = 1;
    Headers headers;
};

// Max-Forwards (RFC 9110 §7.6.2) when present and a decimal number.
std::optional<std::uint64_t> max_forwards(const Headers& headers);

const char* reason_phrase(int status);

// RFC 9110 §7.6.1 connection-specific fields, plus those named in `Connection`, which a
// proxy must not forward. Content-Length and Transfer-Encoding are framing, handled apart.
bool is_hop_by_hop(std::string_view name, const Headers& headers);

}  // namespace llama_pool
