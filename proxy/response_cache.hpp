#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "common/clock.hpp"
#include "proxy/stored_reply.hpp"

namespace llama_pool {

struct ResponseCacheLimits {
    std::size_t max_bytes = 64 * 1024 * 1024;  // keys and replies together
    Duration ttl = seconds(600);
};

// The cache key of a request: who asks, what route and what canonical body. `identity` is
// the client's credential when it presented one (replies never cross API keys) and empty
// otherwise; without credentials every client is the same tenant. Exact bytes, no hash:
// different requests never share a key.
std::string response_cache_key(std::string_view identity, std::string_view method,
                               std::string_view target, std::string_view canonical_body);

// Replies by key, least recently used evicted first when the bytes would exceed the bound,
// each served for at most `ttl` after it was stored (a hit does not extend it). Only 200
// replies are kept. Thread-safe; time is read through the injected TimeSource.
class ResponseCache {
  public:
    ResponseCache(ResponseCacheLimits limits, const TimeSource& time)
        : limits_(limits), time_(time) {}

    struct Hit {
        std::shared_ptr<const StoredReply> reply;
        Duration age{};  // since it was stored
    };
    // A fresh entry, which becomes the most recently used; an expired one is dropped.
    std::optional<Hit> get(const std::string& key);

    enum class StoreResult { stored, not_ok, too_large };
    // Adds or replaces the entry for `key`, then evicts the least recently used others until
    // the bound holds.
    StoreResult put(const std::string& key, std::shared_ptr<const StoredReply> reply);

    struct Stats {
        std::size_t entries = 0;
        std::size_t bytes = 0;
        std::uint64_t evicted = 0;  // pushed out by the byte bound
        std::uint64_t expired = 0;  // found past their TTL
    };
    Stats stats() const;

  private:
    struct Entry {
        std::string key;
        std::shared_ptr<const StoredReply> reply;
        std::size_t bytes = 0;
        TimePoint stored_at;
    };
    using Lru = std::list<Entry>;  // most recently used first

    void erase_locked(Lru::iterator it);

    const ResponseCacheLimits limits_;
    const TimeSource& time_;
    mutable std::mutex mutex_;
    Lru lru_;
    std::unordered_map<std::string_view, Lru::iterator> index_;  // views into Entry::key
    std::size_t bytes_ = 0;
    std::uint64_t evicted_ = 0;
    std::uint64_t expired_ = 0;
};

}  // namespace llama_pool
