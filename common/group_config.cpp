#include "common/group_config.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>

#include "common/config.hpp"
#include "common/config_fields.hpp"

namespace llama_pool {

namespace {

constexpr std::array<std::string_view, 8> kGroupKeys = {
    "name", "aliases", "model", "workers", "min_workers", "idle_stop", "endpoints", "default"};

// workers.* settings that a group may not override: its own keys say them, or they are
// pool-wide.
bool overridable(std::string_view key) {
    return key.rfind("workers.", 0) == 0 && key != "workers.count" && key != "workers.model" &&
           key != "workers.max_total";
}

const FieldSpec* find_workers_field(std::string_view name) {
    const auto key = fmt::format("workers.{}", name);
    for (const auto& f : config_fields()) {
        if (f.key == key) {
            return overridable(f.key) ? &f : nullptr;
        }
    }
    return nullptr;
}

// One group object; `where` names it in errors ("groups[1] \"chat\"").
GroupConfig parse_group(const nlohmann::json& body, const std::string& origin,
                        const std::string& where, std::vector<std::string>& errors) {
    GroupConfig g;
    auto error = [&](std::string_view key, const std::string& why) {
        errors.push_back(fmt::format("{}: {} key \"{}\": {}", origin, where, key, why));
    };
    for (const auto& [key, value] : body.items()) {
        if (key == "name") {
            if (!value.is_string()) {
                error(key, "must be a string");
            } else {
                g.name = value.get<std::string>();
            }
        } else if (key == "aliases" || key == "endpoints") {
            auto& list = key == "aliases" ? g.aliases : g.endpoints;
            if (!read_string_list(value, list)) {
                error(key, "must be an array of strings");
            }
        } else if (key == "model") {
            if (!value.is_string()) {
                error(key, "must be a string (a GGUF file path)");
            } else {
                g.model = value.get<std::string>();
            }
        } else if (key == "workers" || key == "min_workers") {
            if (!value.is_number_integer() || value.get<long long>() < 0 ||
                value.get<long long>() > 256) {
                error(key, fmt::format("{} is not an integer in 0..256", value.dump()));
            } else {
                (key == "workers" ? g.workers : g.min_workers) = value.get<int>();
            }
        } else if (key == "idle_stop") {
            if (!value.is_number() || value.get<double>() < 0 || value.get<double>() > 7 * 86400) {
                error(key, fmt::format("{} is not a number of seconds in 0..604800 (0 = never)",
                                       value.dump()));
            } else {
                g.idle_stop = value.get<double>();
            }
        } else if (key == "default") {
            if (!value.is_boolean()) {
                error(key, "must be true or false");
            } else {
                g.is_default = value.get<bool>();
            }
        } else if (const auto* f = find_workers_field(key)) {
            // Type and range checked by the same code as the workers section, on a scratch
            // config: the group stores only what it overrides.
            PoolConfig scratch;
            const auto before = errors.size();
            apply_field_value(*f, value, fmt::format("{}: {}", origin, where), scratch, errors);
            if (errors.size() == before) {
                g.overrides[std::string(f->key)] = value;
            }
        } else {
            error(key,
                  fmt::format("unknown group key (group keys: {}, or a workers.* setting such as "
                              "parallel, ctx_size, threads, llama_server, args, legacy_flags)",
                              fmt::join(kGroupKeys, ", ")));
        }
    }
    return g;
}

}  // namespace

bool read_string_list(const nlohmann::json& v, std::vector<std::string>& out) {
    if (!v.is_array()) {
        return false;
    }
    out.clear();
    for (const auto& item : v) {
        if (!item.is_string()) {
            return false;
        }
        out.push_back(item.get<std::string>());
    }
    return true;
}

bool is_group_key(std::string_view key) {
    return std::find(kGroupKeys.begin(), kGroupKeys.end(), key) != kGroupKeys.end();
}

bool valid_group_name(std::string_view name) {
    if (name.empty() || name.size() > 64) {
        return false;
    }
    return std::all_of(name.begin(), name.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '.' || c == '_' || c == '-';
    });
}

std::string_view file_name_of(std::string_view path) {
    const auto slash = path.find_last_of("/\\");
    return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

std::vector<GroupConfig> parse_groups_json(const nlohmann::json& array, const std::string& origin,
                                           std::vector<std::string>& errors) {
    std::vector<GroupConfig> groups;
    if (!array.is_array()) {
        errors.push_back(fmt::format(
            "{}: key \"groups\": must be an array of group objects, e.g. [{{\"name\": \"chat\", "
            "\"model\": \"/models/chat.gguf\"}}]",
            origin));
        return groups;
    }
    for (std::size_t i = 0; i < array.size(); ++i) {
        const auto& body = array[i];
        auto where = fmt::format("groups[{}]", i);
        if (!body.is_object()) {
            errors.push_back(fmt::format("{}: {}: must be an object", origin, where));
            continue;
        }
        if (body.contains("name") && body["name"].is_string()) {
            where += " " + quote_for_error(body["name"].get<std::string>());
        }
        groups.push_back(parse_group(body, origin, where, errors));
    }
    return groups;
}

bool parse_group_flag(const std::string& text, GroupConfig& out, std::string& error) {
    const auto eq = text.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == text.size()) {
        error = "must be NAME=MODEL, e.g. chat=/models/chat.gguf";
        return false;
    }
    out = GroupConfig{};
    out.name = text.substr(0, eq);
    out.model = text.substr(eq + 1);
    return true;
}

}  // namespace llama_pool
