#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace llama_pool {

// One tenant of the admission queue as the config file's `tenants` array names it: the
// clients it covers (by API key, or by address when keys are off) and how it shares the
// pool. Requests of clients no tenant names are each their own tenant with the defaults.
struct TenantConfig {
    std::string name;
    std::vector<std::string> keys;       // API keys (auth.api_keys) that belong to it
    std::vector<std::string> addresses;  // client addresses that belong to it
    double weight = 1;                   // share of slots against other waiting tenants
    int priority = 0;                    // higher classes are served first (with ageing)
    int max_concurrency = 0;             // most requests on workers at once; 0: no cap

    bool operator==(const TenantConfig&) const = default;
};

// Parses the config file's `tenants` array, appending errors that name the tenant and key.
std::vector<TenantConfig> parse_tenants_json(const nlohmann::json& array, const std::string& origin,
                                             std::vector<std::string>& errors);

// Cross-tenant checks: names unique and valid, no key or address in two tenants.
void validate_tenants(const std::vector<TenantConfig>& tenants, std::vector<std::string>& errors);

// For --print-config: keys are secrets and shown as a count unless `show_secrets`.
nlohmann::ordered_json tenants_to_json(const std::vector<TenantConfig>& tenants, bool show_secrets);

}  // namespace llama_pool
