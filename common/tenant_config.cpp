#include "common/tenant_config.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <map>

#include "common/group_config.hpp"

namespace llama_pool {

namespace {

constexpr std::array<std::string_view, 6> kTenantKeys = {"name",   "keys",     "addresses",
                                                         "weight", "priority", "max_concurrency"};

bool read_strings(const nlohmann::json& v, std::vector<std::string>& out) {
    return read_string_list(v, out) &&
           std::none_of(out.begin(), out.end(), [](const auto& s) { return s.empty(); });
}

TenantConfig parse_tenant(const nlohmann::json& body, const std::string& origin,
                          const std::string& where, std::vector<std::string>& errors) {
    TenantConfig t;
    auto error = [&](std::string_view key, const std::string& why) {
        errors.push_back(fmt::format("{}: {} key \"{}\": {}", origin, where, key, why));
    };
    for (const auto& [key, value] : body.items()) {
        if (key == "name") {
            if (!value.is_string()) {
                error(key, "must be a string");
            } else {
                t.name = value.get<std::string>();
            }
        } else if (key == "keys" || key == "addresses") {
            if (!read_strings(value, key == "keys" ? t.keys : t.addresses)) {
                error(key, "must be an array of non-empty strings");
            }
        } else if (key == "weight") {
            if (!value.is_number() || value.get<double>() < 0.01 || value.get<double>() > 1000) {
                error(key, fmt::format("{} is not a number in 0.01..1000", value.dump()));
            } else {
                t.weight = value.get<double>();
            }
        } else if (key == "priority") {
            if (!value.is_number_integer() || value.get<long long>() < -100 ||
                value.get<long long>() > 100) {
                error(key, fmt::format("{} is not an integer in -100..100 (higher is served "
                                       "first)",
                                       value.dump()));
            } else {
                t.priority = value.get<int>();
            }
        } else if (key == "max_concurrency") {
            if (!value.is_number_integer() || value.get<long long>() < 0 ||
                value.get<long long>() > 100000) {
                error(key,
                      fmt::format("{} is not an integer in 0..100000 (0 = no cap)", value.dump()));
            } else {
                t.max_concurrency = value.get<int>();
            }
        } else {
            error(key, fmt::format("unknown tenant key (tenant keys: {})",
                                   fmt::join(kTenantKeys, ", ")));
        }
    }
    return t;
}

}  // namespace

std::vector<TenantConfig> parse_tenants_json(const nlohmann::json& array, const std::string& origin,
                                             std::vector<std::string>& errors) {
    std::vector<TenantConfig> tenants;
    if (!array.is_array()) {
        errors.push_back(fmt::format(
            "{}: key \"tenants\": must be an array of tenant objects, e.g. [{{\"name\": "
            "\"n8n\", \"keys\": [\"...\"], \"weight\": 2}}]",
            origin));
        return tenants;
    }
    for (std::size_t i = 0; i < array.size(); ++i) {
        const auto& body = array[i];
        if (!body.is_object()) {
            errors.push_back(
                fmt::format("{}: tenants[{}]: must be an object with a \"name\"", origin, i));
            continue;
        }
        const auto where =
            body.contains("name") && body["name"].is_string()
                ? fmt::format("tenants[{}] \"{}\"", i, body["name"].get<std::string>())
                : fmt::format("tenants[{}]", i);
        tenants.push_back(parse_tenant(body, origin, where, errors));
    }
    return tenants;
}

void validate_tenants(const std::vector<TenantConfig>& tenants, std::vector<std::string>& errors) {
    std::map<std::string, std::size_t> names;
    std::map<std::string, std::size_t> owners;  // key or address -> tenant index
    for (std::size_t i = 0; i < tenants.size(); ++i) {
        const auto& t = tenants[i];
        if (!valid_group_name(t.name)) {
            errors.push_back(fmt::format(
                "tenants[{}]: key \"name\": \"{}\" is not a valid name (1 to 64 letters, digits, "
                "'.', '_', '-'); it becomes a metric label",
                i, t.name));
        } else if (const auto [it, fresh] = names.emplace(t.name, i); !fresh) {
            errors.push_back(fmt::format("tenants[{}]: key \"name\": \"{}\" is also tenants[{}]'s",
                                         i, t.name, it->second));
        }
        if (t.keys.empty() && t.addresses.empty()) {
            errors.push_back(fmt::format(
                "tenants[{}] \"{}\": names no client: give \"keys\" (API keys) or \"addresses\"", i,
                t.name));
        }
        for (const auto* list : {&t.keys, &t.addresses}) {
            for (const auto& who : *list) {
                const auto tag = (list == &t.keys ? "key:" : "address:") + who;
                if (const auto [it, fresh] = owners.emplace(tag, i); !fresh) {
                    // A key is a secret: the error says which tenant, not which key.
                    errors.push_back(
                        list == &t.keys
                            ? fmt::format("tenants[{}] \"{}\": one of its keys already belongs to "
                                          "tenants[{}]",
                                          i, t.name, it->second)
                            : fmt::format("tenants[{}] \"{}\": the address {} already belongs to "
                                          "tenants[{}]",
                                          i, t.name, who, it->second));
                }
            }
        }
    }
}

nlohmann::ordered_json tenants_to_json(const std::vector<TenantConfig>& tenants,
                                       bool show_secrets) {
    auto out = nlohmann::ordered_json::array();
    for (const auto& t : tenants) {
        nlohmann::ordered_json j;
        j["name"] = t.name;
        if (show_secrets) {
            j["keys"] = t.keys;
        } else {
            j["keys"] = fmt::format("<{} redacted>", t.keys.size());
        }
        j["addresses"] = t.addresses;
        j["weight"] = t.weight;
        j["priority"] = t.priority;
        j["max_concurrency"] = t.max_concurrency;
        out.push_back(std::move(j));
    }
    return out;
}

}  // namespace llama_pool
