#pragma once

#include <cstddef>
#include <list>
#include <mutex>
#include <string>
#include <unordered_map>

#include "common/clock.hpp"

namespace llama_pool {

// A token bucket: `rate` tokens per second, holding at most `burst`. Pure; not thread-safe.
class TokenBucket {
  public:
    TokenBucket(double rate, double burst, TimePoint now)
        : rate_(rate), burst_(burst), tokens_(burst), last_(now) {}

    bool try_take(TimePoint now, double n = 1);
    // How long until `n` tokens are available (zero when they are now).
    Duration wait_for(TimePoint now, double n = 1);
    double tokens(TimePoint now);

  private:
    void refill(TimePoint now);
    double rate_;
    double burst_;
    double tokens_;
    TimePoint last_;
};

// One bucket per client key (API key or address). The map is bounded: beyond `max_keys`
// the least recently used bucket is forgotten (a forgotten client starts with a full
// bucket, which errs on the side of serving). Thread-safe.
class KeyedRateLimiter {
  public:
    struct Decision {
        bool allowed = true;
        Duration retry_after{};  // when refused: how long until a token is there
    };

    KeyedRateLimiter(double rate, double burst, std::size_t max_keys = 10000)
        : rate_(rate), burst_(burst), max_keys_(max_keys) {}

    Decision check(const std::string& key, TimePoint now);
    std::size_t tracked_keys() const;

  private:
    struct Entry {
        TokenBucket bucket;
        std::list<std::string>::iterator lru;
    };
    double rate_;
    double burst_;
    std::size_t max_keys_;
    mutable std::mutex mutex_;
    std::list<std::string> lru_;  // most recent first
    std::unordered_map<std::string, Entry> entries_;
};

}  // namespace llama_pool
