#pragma once

#include <limits>
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

}  // namespace llama_pool
