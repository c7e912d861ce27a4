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

namespace {

// splitmix64's finalizer: a bijection on 64-bit values, so distinct counters give distinct ids.
std::uint64_t mix(std::uint64_t x) {
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

std::uint64_t random_start() {
    std::uint64_t bits = 0;
    if (::getrandom(&bits, sizeof bits, GRND_NONBLOCK) != static_cast<ssize_t>(sizeof bits)) {
        // No entropy yet (early boot): the clock differs across restarts, which is enough for
        // log correlation ids.
        bits = static_cast<std::uint64_t>(Clock::now().time_since_epoch().count());
    }
    return bits;
}

}  // namespace

RequestIds::RequestIds() : start_(random_start()) {}

std::string RequestIds::next() {
    return fmt::format("{:016x}", mix(start_ + counter_.fetch_add(1, std::memory_order_relaxed)));
}

std::string RequestIds::for_request(std::optional<std::string_view> incoming) {
    if (incoming && is_acceptable_request_id(*incoming)) {
        return std::string(*incoming);
    }
    return next();
}

}  // namespace llama_pool
