#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/http_message.hpp"
#include "common/tenant_config.hpp"
#include "proxy/fair_queue.hpp"

namespace llama_pool {

// Who a request belongs to, for the fair admission queue. A configured tenant is found by
// the client's API key or address; any other client is its own tenant with the default
// policy: by its API key when the pool checks keys (the key is verified before the relay
// sees it), by its address otherwise (an unchecked key would let one client pose as many).
// Labels never carry a key: an unconfigured key shows as "key-" and 8 hex digits of a hash.
class TenantDirectory {
  public:
    TenantDirectory(const std::vector<TenantConfig>& tenants, bool keys_checked);

    TenantTicket identify(const Headers& headers, std::string_view remote_address) const;
    // Whether `label` names a configured tenant (only those become metric labels).
    bool configured(std::string_view label) const;
    const std::vector<std::string>& configured_labels() const { return labels_; }

  private:
    struct Known {
        std::string label;
        TenantPolicy policy;
    };
    std::map<std::string, Known, std::less<>> by_key_;
    std::map<std::string, Known, std::less<>> by_address_;
    std::vector<std::string> labels_;
    bool keys_checked_;
};

// The label shown for an unconfigured API key.
std::string key_label(std::string_view key);

}  // namespace llama_pool
