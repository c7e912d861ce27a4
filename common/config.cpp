#include "common/config.hpp"

#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <map>
#include <variant>

#include "common/config_fields.hpp"

namespace llama_pool {

std::string quote_for_error(std::string_view text) {
    return nlohmann::json(std::string(text))
        .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

namespace {

std::string describe(const nlohmann::json& v) {
    return v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

const FieldSpec* find_field(std::string_view key) {
    for (const auto& f : config_fields()) {
        if (f.key == key) {
            return &f;
        }
    }
    return nullptr;
}

}  // namespace

void apply_field_value(const FieldSpec& f, const nlohmann::json& v, const std::string& origin,
                       PoolConfig& config, std::vector<std::string>& errors) {
    auto error = [&](const std::string& why) {
        errors.push_back(fmt::format("{}: key \"{}\": {}", origin, f.key, why));
    };
    std::visit(
        [&](auto member) {
            using T = std::remove_reference_t<decltype(config.*member)>;
            if constexpr (std::is_same_v<T, bool>) {
                if (!v.is_boolean()) {
                    return error(
                        fmt::format("{} is not a boolean (use true or false)", describe(v)));
                }
                config.*member = v.get<bool>();
            } else if constexpr (std::is_same_v<T, int>) {
                if (f.auto_zero && v.is_string() && v.get<std::string>() == "auto") {
                    config.*member = 0;
                    return;
                }
                if (!v.is_number_integer()) {
                    return error(fmt::format("{} is not an integer{}", describe(v),
                                             f.auto_zero ? " or \"auto\"" : ""));
                }
                const auto n = v.get<long long>();
                if (n < f.min || n > f.max) {
                    return error(fmt::format("{} is out of range (allowed: {}..{})", n,
                                             static_cast<long long>(f.min),
                                             static_cast<long long>(f.max)));
                }
                config.*member = static_cast<int>(n);
            } else if constexpr (std::is_same_v<T, double>) {
                if (!v.is_number()) {
                    return error(fmt::format("{} is not a number of {}", describe(v), f.unit));
                }
                const auto d = v.get<double>();
                if (!std::isfinite(d) || d < f.min || d > f.max) {
                    return error(fmt::format("{} is out of range (allowed: {}..{} {})", d, f.min,
                                             f.max, f.unit));
                }
                config.*member = d;
            } else if constexpr (std::is_same_v<T, std::string>) {
                if (!v.is_string()) {
                    return error(fmt::format("{} is not a string", describe(v)));
                }
                const auto s = v.get<std::string>();
                if (!f.choices.empty()) {
                    bool allowed = false;
                    for (const auto c : f.choices) {
                        allowed = allowed || s == c;
                    }
                    if (!allowed) {
                        return error(fmt::format("{} is not allowed (allowed: {})",
                                                 quote_for_error(s), fmt::join(f.choices, ", ")));
                    }
                }
                config.*member = s;
            } else {
                if (!v.is_array()) {
                    return error(fmt::format("{} is not an array of strings", describe(v)));
                }
                std::vector<std::string> items;
                for (const auto& item : v) {
                    if (!item.is_string()) {
                        return error(fmt::format("element {} is not a string", describe(item)));
                    }
                    items.push_back(item.get<std::string>());
                }
                config.*member = std::move(items);
            }
        },
        f.member);
}

void apply_config_json(const std::string& text, const std::string& origin, PoolConfig& config,
                       std::vector<std::string>& errors) {
    nlohmann::json doc;
    try {
        doc = nlohmann::json::parse(text, nullptr, true, /*ignore_comments=*/true);
    } catch (const nlohmann::json::exception& e) {
        // parse_error for bad syntax, out_of_range for numbers no double can hold.
        errors.push_back(fmt::format("{}: not valid JSON: {}", origin, e.what()));
        return;
    }
    if (!doc.is_object()) {
        errors.push_back(fmt::format("{}: the top level must be a JSON object", origin));
        return;
    }
    for (const auto& [section, body] : doc.items()) {
        if (section == "groups") {
            config.groups = parse_groups_json(body, origin, errors);
            continue;
        }
        if (section == "tenants") {
            config.tenants = parse_tenants_json(body, origin, errors);
            continue;
        }
        if (!body.is_object()) {
            errors.push_back(
                fmt::format("{}: key {}: must be an object of settings (sections: listen, workers, "
                            "groups, tenants, upstreams, proxy, cache, summarize, jobs, auth, log)",
                            origin, quote_for_error(section)));
            continue;
        }
        for (const auto& [name, value] : body.items()) {
            const auto key = section + "." + name;
            const auto* f = find_field(key);
            if (f == nullptr) {
                errors.push_back(fmt::format("{}: unknown key {}{}", origin, quote_for_error(key),
                                             suggest_key(key)));
                continue;
            }
            apply_field_value(*f, value, origin, config, errors);
        }
    }
}

std::string resolve_executable(const std::string& name) {
    if (name.empty() || name.find('/') != std::string::npos) {
        return name;
    }
    const char* path = std::getenv("PATH");
    std::string_view dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
    while (!dirs.empty()) {
        const auto colon = dirs.find(':');
        const auto dir = dirs.substr(0, colon);
        auto candidate = std::string(dir.empty() ? "." : dir) + "/" + name;
        if (::access(candidate.c_str(), X_OK) == 0) {
            return candidate;
        }
        if (colon == std::string_view::npos) {
            break;
        }
        dirs.remove_prefix(colon + 1);
    }
    return name;
}

bool parse_upstream_url(const std::string& url, UpstreamAddress& out, std::string& error) {
    constexpr std::string_view http = "http://";
    constexpr std::string_view dns = "dns://";
    std::string_view rest = url;
    if (rest.rfind(http, 0) == 0) {
        rest.remove_prefix(http.size());
        out.discover = false;
    } else if (rest.rfind(dns, 0) == 0) {
        rest.remove_prefix(dns.size());
        out.discover = true;
    } else {
        error = "must start with http:// or dns:// (TLS belongs in front of the pool)";
        return false;
    }
    out.weight = 1;
    if (const auto q = rest.find('?'); q != std::string_view::npos) {
        const auto query = rest.substr(q + 1);
        rest = rest.substr(0, q);
        constexpr std::string_view key = "weight=";
        double weight = 0;
        const auto value = query.substr(std::min(query.size(), key.size()));
        const auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), weight);
        if (query.rfind(key, 0) != 0 || ec != std::errc() || ptr != value.data() + value.size() ||
            !(weight > 0 && weight <= 1000)) {
            error = "has an invalid query (allowed: ?weight=N with 0 < N <= 1000)";
            return false;
        }
        out.weight = weight;
    }
    if (!rest.empty() && rest.back() == '/') {
        rest.remove_suffix(1);
    }
    const auto colon = rest.rfind(':');
    if (colon == std::string_view::npos || colon == 0 || rest.find('/') != std::string_view::npos) {
        error = "must be http://host:port or dns://name:port";
        return false;
    }
    auto host = rest.substr(0, colon);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
        host = host.substr(1, host.size() - 2);
    }
    // Nothing empty, no bracket left from a typo, no blank or control byte: getaddrinfo
    // would refuse such a host only later, at every connect.
    const bool bad_byte = std::any_of(host.begin(), host.end(), [](char c) {
        const auto u = static_cast<unsigned char>(c);
        return u <= 0x20 || u == 0x7f || c == '[' || c == ']';
    });
    if (host.empty() || bad_byte) {
        error = "has no valid host";
        return false;
    }
    unsigned port = 0;
    const auto digits = rest.substr(colon + 1);
    const auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
    if (ec != std::errc() || ptr != digits.data() + digits.size() || port == 0 || port > 65535) {
        error = "has no valid port (1..65535)";
        return false;
    }
    out.host = std::string(host);
    out.port = static_cast<std::uint16_t>(port);
    return true;
}

namespace {

// Why a model path names no file, as far as its folder tells: a folder that is missing or
// empty is most often a models volume that is not mounted (Docker creates an empty folder
// for a host path that does not exist), and the files that are there show a misspelt name.
std::string model_folder_hint(const std::string& model) {
    namespace fs = std::filesystem;
    auto folder = fs::path(model).parent_path();
    if (folder.empty()) {
        folder = ".";
    }
    std::error_code ec;
    if (!fs::is_directory(folder, ec)) {
        return fmt::format("; its folder {} does not exist", quote_for_error(folder.string()));
    }
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(folder, ec)) {
        names.push_back(entry.path().filename().string());
    }
    if (ec) {
        return {};
    }
    if (names.empty()) {
        return fmt::format(
            "; its folder {} is empty: is the models folder mounted there (Docker: -v "
            "/path/to/models:/models, compose: MODELS_DIR)?",
            quote_for_error(folder.string()));
    }
    std::sort(names.begin(), names.end());
    constexpr std::size_t kShown = 5;
    std::string shown;
    for (std::size_t i = 0; i < names.size() && i < kShown; ++i) {
        shown += (i == 0 ? "" : ", ") + quote_for_error(names[i]);
    }
    return fmt::format("; its folder {} holds {}{}", quote_for_error(folder.string()), shown,
                       names.size() > kShown ? ", ..." : "");
}

// The llama-server binary and the model of one set of workers. `where` prefixes each error
// ("groups[1] \"embed\": ") when a group's settings are checked.
void validate_workers(const PoolConfig& c, const std::string& where,
                      std::vector<std::string>& errors) {
    if (c.workers <= 0) {
        return;
    }
    const auto exe = resolve_executable(c.llama_server);
    struct stat st {};
    if (::stat(exe.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || ::access(exe.c_str(), X_OK) != 0) {
        errors.push_back(fmt::format(
            "{}key \"workers.llama_server\": {} is not an executable file (set "
            "--llama-server PATH or LLAMA_SERVER; `make -s llama-server-path` builds one)",
            where, quote_for_error(c.llama_server)));
    }
    if (c.model.empty()) {
        errors.push_back(
            fmt::format("{}key \"{}\": no model given (set --model PATH or LLAMA_POOL_MODEL; "
                        "`make -s demo-model-path` builds a small demo model)",
                        where, where.empty() ? "workers.model" : "model"));
    } else if (struct stat ms{}; ::stat(c.model.c_str(), &ms) != 0 || !S_ISREG(ms.st_mode)) {
        errors.push_back(fmt::format("{}key \"{}\": {} does not exist or is not a file{}", where,
                                     where.empty() ? "workers.model" : "model",
                                     quote_for_error(c.model), model_folder_hint(c.model)));
    }
}

// The workers.* settings that must agree with each other. Checked at the top level and again
// on each group's resolved settings, since a group may override one side of a pair. `prefix`
// is how the key is spelled where it was written ("workers." at the top, nothing in a group).
void validate_worker_pairs(const PoolConfig& c, const std::string& where, const std::string& prefix,
                           std::vector<std::string>& errors) {
    if (c.restart_backoff_cap < c.restart_backoff_base) {
        errors.push_back(fmt::format(
            "{}key \"{}restart_backoff_cap\": {} is below restart_backoff_base {} (the cap "
            "must be at least the base)",
            where, prefix, c.restart_backoff_cap, c.restart_backoff_base));
    }
}

std::string group_where(std::size_t index, const GroupConfig& g) {
    return fmt::format("groups[{}] {}: ", index, quote_for_error(g.name));
}

void validate_groups(const PoolConfig& c, std::vector<std::string>& errors) {
    std::map<std::string, std::string> names;  // name or alias -> the group that has it
    int defaults = 0;
    int always_on = 0;
    const auto resolved = resolve_groups(c, 1);
    for (std::size_t i = 0; i < c.groups.size(); ++i) {
        const auto& g = c.groups[i];
        const auto where = group_where(i, g);
        if (g.name.empty()) {
            errors.push_back(fmt::format("groups[{}]: key \"name\" is required", i));
        }
        std::vector<std::string> labels = g.aliases;
        labels.insert(labels.begin(), g.name);
        for (std::size_t k = 0; k < labels.size(); ++k) {
            const auto& label = labels[k];
            const auto key = k == 0 ? "name" : "aliases";
            if (label.empty() && k == 0) {
                continue;
            }
            if (!valid_group_name(label)) {
                errors.push_back(fmt::format(
                    "{}key \"{}\": {} may hold only letters, digits, '.', '_' and '-' (1 to 64)",
                    where, key, quote_for_error(label)));
            } else if (const auto [it, fresh] = names.emplace(label, g.name); !fresh) {
                errors.push_back(fmt::format(
                    "{}key \"{}\": {} is already the name or an alias of group {}; names and "
                    "aliases must be unique",
                    where, key, quote_for_error(label), quote_for_error(it->second)));
            }
        }
        for (const auto& e : g.endpoints) {
            if (e.empty() || e.front() != '/') {
                errors.push_back(
                    fmt::format("{}key \"endpoints\": {} is not a path (e.g. "
                                "\"/v1/embeddings\")",
                                where, quote_for_error(e)));
            }
        }
        defaults += g.is_default ? 1 : 0;
        const auto& spec = resolved[i].spec;
        if (spec.min_workers > spec.workers) {
            errors.push_back(fmt::format(
                "{}key \"min_workers\": {} is more than the group's workers ({}); lower it or "
                "raise workers",
                where, spec.min_workers, spec.workers));
        }
        always_on += spec.min_workers;
        validate_workers(resolved[i].config, where, errors);
        // Only a group that overrides something gets its own verdict: an error in workers.*
        // alone is reported once, at the top level.
        if (!g.overrides.empty()) {
            std::vector<std::string> own;
            validate_worker_pairs(resolved[i].config, where, "", own);
            std::vector<std::string> inherited;
            validate_worker_pairs(c, where, "", inherited);
            if (own != inherited) {
                errors.insert(errors.end(), own.begin(), own.end());
            }
        }
    }
    if (defaults > 1) {
        errors.push_back(fmt::format(
            "key \"groups\": {} groups say \"default\": true; at most one may (without one, the "
            "first group is the default)",
            defaults));
    }
    if (c.max_total_workers > 0 && always_on > c.max_total_workers) {
        errors.push_back(fmt::format(
            "key \"workers.max_total\": {} is below the {} workers the groups keep running "
            "(their min_workers together); raise it or lower some group's min_workers",
            c.max_total_workers, always_on));
    }
}

}  // namespace

std::vector<ResolvedGroup> resolve_groups(const PoolConfig& config, unsigned cores) {
    std::vector<ResolvedGroup> out;
    if (config.groups.empty()) {
        ResolvedGroup g;
        g.spec.name = std::string(kImplicitGroup);
        g.spec.model = config.model;
        g.spec.workers = config.workers;
        g.spec.min_workers = config.workers;
        g.spec.is_default = true;
        g.config = config;
        g.implicit = true;
        out.push_back(std::move(g));
    }
    for (const auto& spec : config.groups) {
        ResolvedGroup g;
        g.spec = spec;
        g.config = config;
        g.config.groups.clear();
        std::vector<std::string> ignored;  // overrides were checked when parsed
        for (const auto& [key, value] : spec.overrides.items()) {
            for (const auto& f : config_fields()) {
                if (f.key == key) {
                    apply_field_value(f, value, "", g.config, ignored);
                }
            }
        }
        if (!spec.model.empty()) {
            g.config.model = spec.model;
        }
        if (spec.workers >= 0) {
            g.config.workers = spec.workers;
        }
        g.spec.workers = g.config.workers;
        g.spec.model = g.config.model;
        if (g.spec.min_workers < 0) {
            g.spec.min_workers = g.spec.workers;
        }
        out.push_back(std::move(g));
    }
    // The first group is the default unless one says so.
    if (std::none_of(out.begin(), out.end(), [](const auto& g) { return g.spec.is_default; })) {
        out.front().spec.is_default = true;
    }
    // Unmanaged upstreams serve the default group only: an upstream's model is not known.
    bool default_seen = false;
    for (auto& g : out) {
        if (g.spec.is_default && !default_seen) {
            default_seen = true;
        } else {
            g.config.upstreams.clear();
        }
    }
    // Automatic threads divide the cores among the workers that can run at once: every
    // group's, or the budget's worth when that is smaller.
    int concurrent = 0;
    for (const auto& g : out) {
        concurrent += g.spec.workers;
    }
    if (config.max_total_workers > 0) {
        concurrent = std::min(concurrent, config.max_total_workers);
    }
    for (auto& g : out) {
        if (g.config.threads == 0 && !g.implicit) {
            g.config.threads = std::max(1, static_cast<int>(cores) / std::max(1, concurrent));
        }
    }
    return out;
}

void validate_config(const PoolConfig& c, std::vector<std::string>& errors) {
    for (const auto& url : c.upstreams) {
        UpstreamAddress address;
        std::string why;
        if (!parse_upstream_url(url, address, why)) {
            errors.push_back(
                fmt::format("key \"upstreams.urls\": {} {}", quote_for_error(url), why));
        }
    }
    if (c.groups.empty()) {
        validate_workers(c, "", errors);
    } else {
        validate_groups(c, errors);
    }
    validate_tenants(c.tenants, errors);
    if (c.summarize_overlap > c.summarize_max_chunk_chars / 2) {
        errors.push_back(fmt::format(
            "key \"summarize.overlap\": {} is more than half of summarize.max_chunk_chars ({}); "
            "lower it to {} or less",
            c.summarize_overlap, c.summarize_max_chunk_chars, c.summarize_max_chunk_chars / 2));
    }
    for (const auto& [key, prompt] :
         {std::pair{"summarize.map_prompt", &c.summarize_map_prompt},
          std::pair{"summarize.reduce_prompt", &c.summarize_reduce_prompt}}) {
        if (!prompt->empty() && prompt->find("{text}") == std::string::npos) {
            errors.push_back(fmt::format(
                "key \"{}\": the prompt has no {{text}} placeholder, so the text would never "
                "reach the model",
                key));
        }
    }
    if (!c.api_key_file.empty() && ::access(c.api_key_file.c_str(), R_OK) != 0) {
        errors.push_back(
            fmt::format("key \"auth.api_key_file\": {} cannot be read (one key per line expected)",
                        quote_for_error(c.api_key_file)));
    }
    if (c.retry_backoff_cap < c.retry_backoff_base) {
        errors.push_back(fmt::format(
            "key \"proxy.retry_backoff_cap\": {} is below retry_backoff_base {} (the cap must "
            "be at least the base)",
            c.retry_backoff_cap, c.retry_backoff_base));
    }
    validate_worker_pairs(c, "", "workers.", errors);
    // The breaker would silently use the max for every ejection; say so instead.
    if (c.breaker_max_ejection < c.breaker_ejection) {
        errors.push_back(fmt::format(
            "key \"proxy.breaker_max_ejection\": {} is below breaker_ejection {} (the longest "
            "ejection must be at least the first)",
            c.breaker_max_ejection, c.breaker_ejection));
    }
}

nlohmann::ordered_json config_to_json(const PoolConfig& config, bool show_secrets) {
    nlohmann::ordered_json out = nlohmann::ordered_json::object();
    for (const auto& f : config_fields()) {
        const auto dot = f.key.find('.');
        const std::string section(f.key.substr(0, dot));
        const std::string name(f.key.substr(dot + 1));
        std::visit([&](auto member) { out[section][name] = config.*member; }, f.member);
        if (f.auto_zero && out[section][name] == 0) {
            out[section][name] = "auto";
        }
        const auto& value = out[section][name];
        const bool blank = (value.is_string() && value.get<std::string>().empty()) ||
                           (value.is_array() && value.empty());
        if (f.secret && !show_secrets && !blank) {
            out[section][name] = "<redacted>";
        }
    }
    if (!config.groups.empty()) {
        out["groups"] = groups_to_json(config.groups);
    }
    if (!config.tenants.empty()) {
        out["tenants"] = tenants_to_json(config.tenants, show_secrets);
    }
    return out;
}

nlohmann::ordered_json groups_to_json(const std::vector<GroupConfig>& groups) {
    auto out = nlohmann::ordered_json::array();
    for (const auto& g : groups) {
        nlohmann::ordered_json j;
        j["name"] = g.name;
        j["aliases"] = g.aliases;
        j["model"] = g.model;
        j["workers"] = g.workers;
        j["min_workers"] = g.min_workers;
        j["idle_stop"] = g.idle_stop;
        j["endpoints"] = g.endpoints;
        j["default"] = g.is_default;
        for (const auto& [key, value] : g.overrides.items()) {
            j[key.substr(key.find('.') + 1)] = value;
        }
        out.push_back(std::move(j));
    }
    return out;
}

nlohmann::ordered_json checked_config_json(const PoolConfig& config) {
    auto shown = config_to_json(config);
    if (!config.groups.empty()) {
        std::vector<GroupConfig> resolved;
        for (const auto& g : resolve_groups(config, 1)) {
            resolved.push_back(g.spec);
        }
        shown["groups"] = groups_to_json(resolved);
    }
    return shown;
}

std::vector<std::string> changed_keys(const PoolConfig& a, const PoolConfig& b) {
    const auto ja = config_to_json(a, true);
    const auto jb = config_to_json(b, true);
    std::vector<std::string> out;
    for (const auto& f : config_fields()) {
        const auto dot = f.key.find('.');
        const std::string section(f.key.substr(0, dot));
        const std::string name(f.key.substr(dot + 1));
        if (ja[section][name] != jb[section][name]) {
            out.emplace_back(f.key);
        }
    }
    if (a.groups != b.groups) {
        out.emplace_back("groups");
    }
    if (a.tenants != b.tenants) {
        out.emplace_back("tenants");
    }
    return out;
}

}  // namespace llama_pool
