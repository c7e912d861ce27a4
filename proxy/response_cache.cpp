#include "proxy/response_cache.hpp"

namespace llama_pool {

std::string response_cache_key(std::string_view identity, std::string_view method,
                               std::string_view target, std::string_view canonical_body) {
    // Length-prefixed parts: no choice of bytes in one part can make it read as another.
    std::string key;
    key.reserve(identity.size() + method.size() + target.size() + canonical_body.size() + 24);
    for (const auto part : {identity, method, target}) {
        key += std::to_string(part.size());
        key += ':';
        key += part;
    }
    key += canonical_body;
    return key;
}

std::optional<ResponseCache::Hit> ResponseCache::get(const std::string& key) {
    const auto now = time_.now();
    std::lock_guard lock(mutex_);
    const auto found = index_.find(key);
    if (found == index_.end()) {
        return std::nullopt;
    }
    const auto it = found->second;
    if (now - it->stored_at >= limits_.ttl) {
        ++expired_;
        erase_locked(it);
        return std::nullopt;
    }
    lru_.splice(lru_.begin(), lru_, it);
    return Hit{it->reply, now - it->stored_at};
}

ResponseCache::StoreResult ResponseCache::put(const std::string& key,
                                              std::shared_ptr<const StoredReply> reply) {
    if (!reply || reply->status != 200) {
        return StoreResult::not_ok;
    }
    const auto bytes = key.size() + reply->size();
    if (bytes > limits_.max_bytes) {
        return StoreResult::too_large;
    }
    const auto now = time_.now();
    std::lock_guard lock(mutex_);
    if (const auto found = index_.find(key); found != index_.end()) {
        erase_locked(found->second);
    }
    while (bytes_ + bytes > limits_.max_bytes && !lru_.empty()) {
        ++evicted_;
        erase_locked(std::prev(lru_.end()));
    }
    lru_.push_front(Entry{key, std::move(reply), bytes, now});
    index_.emplace(lru_.front().key, lru_.begin());
    bytes_ += bytes;
    return StoreResult::stored;
}

void ResponseCache::erase_locked(Lru::iterator it) {
    bytes_ -= it->bytes;
    index_.erase(it->key);
    lru_.erase(it);
}

ResponseCache::Stats ResponseCache::stats() const {
    std::lock_guard lock(mutex_);
    return {lru_.size(), bytes_, evicted_, expired_};
}

}  // namespace llama_pool
