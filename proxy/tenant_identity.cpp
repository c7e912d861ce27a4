#include "proxy/tenant_identity.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "common/credentials.hpp"

namespace llama_pool {

TenantDirectory::TenantDirectory(const std::vector<TenantConfig>& tenants, bool keys_checked)
    : keys_checked_(keys_checked) {
    for (const auto& t : tenants) {
        const Known known{t.name, {t.weight, t.priority, t.max_concurrency}};
        for (const auto& key : t.keys) {
            by_key_.emplace(key, known);
        }
        for (const auto& address : t.addresses) {
            by_address_.emplace(address, known);
        }
        labels_.push_back(t.name);
    }
}

std::string key_label(std::string_view key) {
    // FNV-1a: stable across runs and builds, unlike std::hash; 32 bits tell keys apart on
    // a status page without helping anyone guess one.
    std::uint64_t h = 14695981039346656037ULL;
    for (const unsigned char c : key) {
        h = (h ^ c) * 1099511628211ULL;
    }
    return fmt::format("key-{:08x}", static_cast<std::uint32_t>(h >> 32));
}

TenantTicket TenantDirectory::identify(const Headers& headers,
                                       std::string_view remote_address) const {
    const auto key = presented_key(headers);
    if (key) {
        // A configured tenant's key is a secret the client proved it has, checked or not.
        if (const auto it = by_key_.find(*key); it != by_key_.end()) {
            return {"tenant:" + it->second.label, it->second.label, it->second.policy};
        }
    }
    if (const auto it = by_address_.find(remote_address); it != by_address_.end()) {
        return {"tenant:" + it->second.label, it->second.label, it->second.policy};
    }
    if (key && keys_checked_) {
        // The id is the key itself (in memory only): two keys whose labels collide stay
        // two tenants.
        return {"key:" + std::string(*key), key_label(*key), {}};
    }
    return {"addr:" + std::string(remote_address), std::string(remote_address), {}};
}

bool TenantDirectory::configured(std::string_view label) const {
    return std::find(labels_.begin(), labels_.end(), label) != labels_.end();
}

}  // namespace llama_pool
