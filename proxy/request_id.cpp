#include "proxy/request_id.hpp"

#include <fmt/format.h>
#include <sys/random.h>

#include <cctype>

#include "common/clock.hpp"

namespace llama_pool {

bool is_acceptable_request_id(std::string_view id) {
    if (id.empty() || id.size() > 128) {
        return false;
    }
    for (const char c : id) {
        const auto u = static_cast<unsigned char>(c);
        if (!std::isalnum(u) && c != '.' && c != '_' && c != ':' && c != '-') {
            return false;
        }
    }
    return true;
}

std::string new_request_id() {
    std::uint64_t bits = 0;
    if (::getrandom(&bits, sizeof bits, GRND_NONBLOCK) != static_cast<ssize_t>(sizeof bits)) {
        // No entropy yet (early boot): the clock is unique enough for a log correlation id.
        bits = static_cast<std::uint64_t>(Clock::now().time_since_epoch().count()) *
               0x9e3779b97f4a7c15ULL;
    }
    return fmt::format("{:016x}", bits);
}

std::string request_id_for(std::optional<std::string_view> incoming) {
    if (incoming && is_acceptable_request_id(*incoming)) {
        return std::string(*incoming);
    }
    return new_request_id();
}

}  // namespace llama_pool
