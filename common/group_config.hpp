#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace llama_pool {

// One model group as the config file (or --group NAME=MODEL) describes it: a set of
// llama-server workers that share a model and settings, reached by name, alias, the model's
// file name or an endpoint. Everything not given here is inherited from `workers.*`.
struct GroupConfig {
    std::string name;
    std::vector<std::string> aliases;
    std::string model;     // empty: workers.model
    int workers = -1;      // most workers it runs; -1: workers.count
    int min_workers = -1;  // kept running when idle; -1: = workers; 0: start on demand
    double idle_stop = 0;  // seconds idle before one worker stops (down to min_workers); 0: never
    std::vector<std::string> endpoints;  // paths it serves when a request names no model
    bool is_default = false;
    // Per-group `workers.*` settings, as {"workers.parallel": 4, ...}, already type-checked.
    nlohmann::json overrides = nlohmann::json::object();

    bool operator==(const GroupConfig&) const = default;
};

// The keys a group object may carry besides `workers.*` overrides.
bool is_group_key(std::string_view key);

// Parses the config file's `groups` array, appending errors that name the group and key.
std::vector<GroupConfig> parse_groups_json(const nlohmann::json& array, const std::string& origin,
                                           std::vector<std::string>& errors);

// "NAME=MODEL" from --group or LLAMA_POOL_GROUPS; false with `error`.
bool parse_group_flag(const std::string& text, GroupConfig& out, std::string& error);

// A JSON array of strings into `out`; false (out unspecified) for anything else. Shared by the
// config file's array sections (groups, tenants).
bool read_string_list(const nlohmann::json& v, std::vector<std::string>& out);

// Group names and aliases: letters, digits, '.', '_', '-'; 1 to 64 characters.
bool valid_group_name(std::string_view name);

// The file name at the end of a path ("models/x/ggml-model.gguf" -> "ggml-model.gguf").
std::string_view file_name_of(std::string_view path);

}  // namespace llama_pool
