#pragma once

#include <limits>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/config.hpp"

namespace llama_pool {

// One configurable setting: its JSON key ("section.name"), command-line flag, environment
// variable, help text and bounds. This table is the single source for parsing, --help,
// environment variables and the effective-config dump, so they cannot drift apart.
struct FieldSpec {
    using Member = std::variant<int PoolConfig::*, double PoolConfig::*, bool PoolConfig::*,
                                std::string PoolConfig::*, std::vector<std::string> PoolConfig::*>;

    std::string_view key;
    std::string_view flag;  // "" when the setting has no flag
    std::string_view env;   // "" when the setting has no environment variable
    std::string_view help;
    Member member;
    double min = 0;
    double max = std::numeric_limits<int>::max();
    std::string_view unit = "";
    std::vector<std::string_view> choices = {};
    bool auto_zero = false;  // accepts "auto", stored as 0
    bool secret = false;     // never printed
};

std::span<const FieldSpec> config_fields();
// " (did you mean \"workers.count\"?)" or "".
std::string suggest_key(std::string_view key);
// Text from outside (a key, a value, a path) JSON-quoted for an error message: a line break
// or control byte in it must not split the one-line error.
std::string quote_for_error(std::string_view text);
// Checks one setting's value and stores it, or appends an error naming `origin` and the key.
void apply_field_value(const FieldSpec& f, const nlohmann::json& value, const std::string& origin,
                       PoolConfig& config, std::vector<std::string>& errors);

}  // namespace llama_pool
