#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

// Shared by the libFuzzer targets in this directory. Each target is a plain
// LLVMFuzzerTestOneInput over the raw input, so a seed file is exactly what a peer would send
// (a request, a /metrics body, a config file) and stays readable.

namespace llama_pool::fuzz {

// A broken invariant is a finding like a crash: say which one, then abort so that libFuzzer
// keeps the input as crash-<sha1>.
[[noreturn]] inline void invariant_failed(const char* what, const char* file, int line) {
    std::fprintf(stderr, "fuzz invariant violated: %s (%s:%d)\n", what, file, line);
    std::abort();
}

inline std::string_view as_text(const std::uint8_t* data, std::size_t size) {
    return {reinterpret_cast<const char*>(data), size};
}

// Split points and limits come from a hash of the input rather than from leading parameter
// bytes: seeds stay plain protocol text, and every mutation still moves the split.
inline std::uint64_t input_hash(std::string_view bytes) {
    std::uint64_t h = 14695981039346656037ULL;
    for (const char c : bytes) {
        h ^= static_cast<unsigned char>(c);
        h *= 1099511628211ULL;
    }
    return h ^ (h >> 29);
}

// A position in [0, size], different for each `salt`.
inline std::size_t split_point(std::string_view bytes, std::uint64_t salt) {
    const auto h = input_hash(bytes) * (2 * salt + 1) + salt;
    return static_cast<std::size_t>((h >> 7) % (bytes.size() + 1));
}

}  // namespace llama_pool::fuzz

#define FUZZ_CHECK(cond)           \
    ((cond) ? static_cast<void>(0) \
            : ::llama_pool::fuzz::invariant_failed(#cond, __FILE__, __LINE__))
