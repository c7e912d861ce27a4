#include "common/credentials.hpp"

namespace llama_pool {

bool constant_time_equals(std::string_view a, std::string_view b) {
    unsigned char diff = a.size() == b.size() ? 0 : 1;
    const auto n = a.size() > b.size() ? a.size() : b.size();
    for (std::size_t i = 0; i < n; ++i) {
        const auto x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
        const auto y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
        diff |= static_cast<unsigned char>(x ^ y);
    }
    return diff == 0;
}

std::optional<std::string_view> presented_key(const Headers& headers) {
    if (const auto auth = headers.get("Authorization")) {
        constexpr std::string_view bearer = "Bearer ";
        if (auth->size() > bearer.size() && iequals(auth->substr(0, bearer.size()), bearer)) {
            return auth->substr(bearer.size());
        }
    }
    if (const auto key = headers.get("X-Api-Key")) {
        return key;
    }
    return std::nullopt;
}

}  // namespace llama_pool
