#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include "common/config.hpp"
#include "common/config_fields.hpp"

namespace llama_pool {

std::span<const FieldSpec> config_fields() {
    using P = PoolConfig;
    constexpr double day = 86400;
    static const std::vector<FieldSpec> fields = {
        {"listen.host", "--host", "LLAMA_POOL_HOST",
         "address to listen on (127.0.0.1 keeps the pool private; 0.0.0.0 for all)", &P::host},
        {"listen.port", "--port", "LLAMA_POOL_PORT", "port to listen on", &P::port, 0, 65535},
        {"listen.max_connections", "--max-connections", "LLAMA_POOL_MAX_CONNECTIONS",
         "client connections held at once; more get 503", &P::max_connections, 1, 100000},
        {"listen.shutdown_grace", "--shutdown-grace", "LLAMA_POOL_SHUTDOWN_GRACE",
         "on SIGTERM, how long in-flight requests may finish", &P::shutdown_grace, 0, day,
         "seconds"},
        {"workers.count", "--workers", "LLAMA_POOL_WORKERS", "llama-server workers to run",
         &P::workers, 0, 256},
        {"workers.max_total", "--max-total-workers", "LLAMA_POOL_MAX_TOTAL_WORKERS",
         "most llama-server processes at once across all groups; to start another, the least "
         "recently used idle group gives one up (0 = no limit)",
         &P::max_total_workers, 0, 4096},
        {"workers.llama_server", "--llama-server", "LLAMA_SERVER",
         "llama-server binary (path, or a name on PATH)", &P::llama_server},
        {"workers.model", "--model", "LLAMA_POOL_MODEL", "GGUF model file every worker loads",
         &P::model},
        {"workers.threads",
         "--threads",
         "LLAMA_POOL_THREADS",
         "threads per worker; auto divides the cores among the workers",
         &P::threads,
         0,
         1024,
         "",
         {},
         true},
        {"workers.ctx_size", "--ctx-size", "LLAMA_POOL_CTX_SIZE",
         "context tokens per worker, shared by its slots (0 = the model's)", &P::ctx_size, 0,
         16 * 1024 * 1024},
        {"workers.parallel", "--parallel", "LLAMA_POOL_PARALLEL", "slots per worker", &P::parallel,
         1, 256},
        {"workers.args", "--worker-arg", "",
         "extra argument passed to every worker (repeat the flag for several)", &P::worker_args},
        {"workers.legacy_flags", "--legacy-flags", "LLAMA_POOL_LEGACY_FLAGS",
         "no longer needed: every known llama-server (BitNet's too) accepts the pool's flags",
         &P::legacy_flags},
        {"workers.startup_timeout", "--startup-timeout", "LLAMA_POOL_STARTUP_TIMEOUT",
         "how long a worker may take to load its model", &P::startup_timeout, 1, day, "seconds"},
        {"workers.warmup_timeout", "--warmup-timeout", "",
         "how long the warm-up completion may take", &P::warmup_timeout, 1, day, "seconds"},
        {"workers.health_interval", "--health-interval", "",
         "time between /health probes of a ready worker", &P::health_interval, 0.05, 3600,
         "seconds"},
        {"workers.health_timeout", "--health-timeout", "", "timeout of one /health probe",
         &P::health_timeout, 0.05, 3600, "seconds"},
        {"workers.health_failures", "--health-failures", "",
         "consecutive failed probes that take a worker out and replace it", &P::health_failures, 1,
         100},
        {"workers.idle_probe_interval", "--idle-probe-interval", "",
         "an idle worker gets a one-token completion this often (keeps it warm, catches hangs)",
         &P::idle_probe_interval, 1, day, "seconds"},
        {"workers.stall_timeout", "--stall-timeout", "LLAMA_POOL_STALL_TIMEOUT",
         "a worker with requests in flight that makes no progress this long is taken out and "
         "replaced (0 = never)",
         &P::stall_timeout, 0, day, "seconds"},
        {"workers.restart_backoff_base", "--restart-backoff-base", "",
         "first restart delay; doubles per consecutive failure", &P::restart_backoff_base, 0.01,
         day, "seconds"},
        {"workers.restart_backoff_cap", "--restart-backoff-cap", "", "longest restart delay",
         &P::restart_backoff_cap, 0.01, day, "seconds"},
        {"workers.crash_loop_restarts", "--crash-loop-restarts", "",
         "failures within crash_loop_window that mark a worker failed", &P::crash_loop_restarts, 1,
         1000},
        {"workers.crash_loop_window", "--crash-loop-window", "", "window for counting a crash loop",
         &P::crash_loop_window, 1, day, "seconds"},
        {"workers.stop_grace", "--stop-grace", "",
         "between SIGTERM and SIGKILL when stopping a worker", &P::stop_grace, 0, 3600, "seconds"},
        {"proxy.connect_timeout", "--connect-timeout", "", "connecting to a worker",
         &P::connect_timeout, 0.01, 3600, "seconds"},
        {"proxy.response_timeout", "--response-timeout", "",
         "waiting for a worker's response head (prompt processing included)", &P::response_timeout,
         0.1, day, "seconds"},
        {"proxy.stream_idle_timeout", "--stream-idle-timeout", "",
         "longest silence between two pieces of a streamed response", &P::stream_idle_timeout, 0.1,
         day, "seconds"},
        {"proxy.total_timeout", "--total-timeout", "", "whole request, streams included",
         &P::total_timeout, 0.1, 7 * day, "seconds"},
        {"proxy.queue_timeout", "--queue-timeout", "LLAMA_POOL_QUEUE_TIMEOUT",
         "how long a request may wait for a free worker slot", &P::queue_timeout, 0, day,
         "seconds"},
        {"proxy.max_body_bytes", "--max-body-bytes", "", "largest request body (413 above)",
         &P::max_body_bytes, 1024, 1 << 30},
        {"proxy.max_header_bytes", "--max-header-bytes", "", "largest request head (431 above)",
         &P::max_header_bytes, 1024, 1 << 20},
        {"proxy.head_timeout", "--head-timeout", "",
         "a client must send its whole request head within this", &P::head_timeout, 0.1, 3600,
         "seconds"},
        {"proxy.body_timeout", "--body-timeout", "",
         "a client must send its whole request body within this", &P::body_timeout, 0.1, day,
         "seconds"},
        {"proxy.keep_alive_timeout", "--keep-alive-timeout", "",
         "idle client connections are closed after this", &P::keep_alive_timeout, 0.1, day,
         "seconds"},
        {"proxy.balancer",
         "--balancer",
         "LLAMA_POOL_BALANCER",
         "how a worker is chosen: least-loaded, round-robin or prefix-affinity (same prompt "
         "prefix, same worker: reuses its prompt cache)",
         &P::balancer,
         0,
         0,
         "",
         {"least-loaded", "round-robin", "prefix-affinity"}},
        {"proxy.affinity_prefix_chars", "--affinity-prefix-chars", "",
         "prefix-affinity compares this many leading characters of the prompt",
         &P::affinity_prefix_chars, 1, 1 << 20},
        {"proxy.queue_max", "--queue-max", "LLAMA_POOL_QUEUE_MAX",
         "requests that may wait for a slot; more get 503 with Retry-After", &P::queue_max, 0,
         1 << 20},
        {"proxy.priority_aging", "--priority-aging", "",
         "a queued request's priority class rises by one per this wait (0 = strict classes)",
         &P::priority_aging, 0, 86400, "seconds"},
        {"proxy.light_connections", "--light-connections", "",
         "requests that take no generation slot (/tokenize, /detokenize, /apply-template, ...) "
         "in flight to one worker at once; they wait for one another, never for a slot",
         &P::light_connections, 1, 1024},
        {"proxy.retry_attempts", "--retry-attempts", "",
         "attempts per request before the response starts (1 = no retry)", &P::retry_attempts, 1,
         10},
        {"proxy.retry_backoff_base", "--retry-backoff-base", "",
         "first retry waits up to this (full jitter), doubling per attempt", &P::retry_backoff_base,
         0, 3600, "seconds"},
        {"proxy.retry_backoff_cap", "--retry-backoff-cap", "", "longest wait between attempts",
         &P::retry_backoff_cap, 0, 3600, "seconds"},
        {"proxy.retry_budget_ratio", "--retry-budget-ratio", "",
         "retries in flight may be at most this share of requests in flight",
         &P::retry_budget_ratio, 0, 10},
        {"proxy.retry_budget_min", "--retry-budget-min", "",
         "retries always allowed in flight, whatever the ratio", &P::retry_budget_min, 0, 10000},
        {"proxy.breaker_failures", "--breaker-failures", "",
         "consecutive failures that eject a worker", &P::breaker_failures, 1, 1000},
        {"proxy.breaker_failure_ratio", "--breaker-failure-ratio", "",
         "or this share of failures over the breaker window (at least 10 requests)",
         &P::breaker_failure_ratio, 0.01, 1},
        {"proxy.breaker_window", "--breaker-window", "", "window for the failure ratio",
         &P::breaker_window, 0.1, 86400, "seconds"},
        {"proxy.breaker_ejection", "--breaker-ejection", "",
         "first ejection; doubles when a worker is ejected again", &P::breaker_ejection, 0.01,
         86400, "seconds"},
        {"proxy.breaker_max_ejection", "--breaker-max-ejection", "", "longest ejection",
         &P::breaker_max_ejection, 0.01, 86400, "seconds"},
        {"proxy.breaker_half_open_trials", "--breaker-half-open-trials", "",
         "trial requests at once to an ejected worker whose time is up",
         &P::breaker_half_open_trials, 1, 1000},
        {"cache.enabled", "--cache", "LLAMA_POOL_CACHE_ENABLED",
         "answer repeated deterministic requests (temperature 0 or a fixed seed, not streamed) "
         "from a reply cache",
         &P::cache_enabled},
        {"cache.max_bytes", "--cache-max-bytes", "LLAMA_POOL_CACHE_MAX_BYTES",
         "memory the reply cache may hold; least recently used replies go first",
         &P::cache_max_bytes, 1024},
        {"cache.ttl", "--cache-ttl", "LLAMA_POOL_CACHE_TTL", "how long a cached reply is served",
         &P::cache_ttl, 0.001, 30 * day, "seconds"},
        {"cache.idempotency_window", "--idempotency-window", "LLAMA_POOL_IDEMPOTENCY_WINDOW",
         "a request with an Idempotency-Key joins the same client's request in flight, and gets "
         "its reply for this long after it ended; 0 = the header is ignored",
         &P::idempotency_window, 0, day, "seconds"},
        {"cache.idempotency_max_bytes", "--idempotency-max-bytes", "",
         "memory the replies kept for Idempotency-Key replays may hold; oldest go first",
         &P::idempotency_max_bytes, 1024},
        {"upstreams.urls", "--upstream", "LLAMA_POOL_UPSTREAMS",
         "an upstream the pool fronts without managing it: http://host:port, or "
         "dns://name:port for every address the name resolves to (repeatable; "
         "comma-separated in the environment)",
         &P::upstreams},
        {"upstreams.dns_interval", "--dns-interval", "",
         "how often dns://name:port upstreams are resolved again (new addresses join after "
         "their checks, vanished ones are drained)",
         &P::dns_interval, 0.1, 86400, "seconds"},
        {"upstreams.api_key",
         "--upstream-api-key",
         "LLAMA_POOL_UPSTREAM_API_KEY",
         "key sent to upstreams as a Bearer token",
         &P::upstream_api_key,
         0,
         0,
         "",
         {},
         false,
         true},
        {"summarize.max_chunk_chars", "--summarize-chunk-chars", "",
         "characters per chunk (overlap included) when a request does not say",
         &P::summarize_max_chunk_chars, 200, 1'000'000, "characters"},
        {"summarize.overlap", "--summarize-overlap", "",
         "characters of a chunk repeated at the start of the next, at most half a chunk",
         &P::summarize_overlap, 0, 500'000, "characters"},
        {"summarize.levels", "--summarize-levels", "", "rounds of summaries of summaries at most",
         &P::summarize_levels, 1, 10},
        {"summarize.max_text_chars", "--summarize-max-text-chars", "",
         "longest text a summary request may carry", &P::summarize_max_text_chars, 1, 100'000'000,
         "characters"},
        {"summarize.map_prompt", "--summarize-map-prompt", "",
         "prompt for chunks of the text, with {text} and optionally {topic}; empty = built-in",
         &P::summarize_map_prompt},
        {"summarize.reduce_prompt", "--summarize-reduce-prompt", "",
         "prompt for chunks of joined summaries, with {text} and optionally {topic}; empty = "
         "built-in",
         &P::summarize_reduce_prompt},
        {"jobs.data_dir", "--data-dir", "LLAMA_POOL_DATA_DIR",
         "directory where job records are kept across restarts (created at start; the pool "
         "exits with code 2 when it cannot write there); "
         "empty = memory only",
         &P::jobs_data_dir},
        {"jobs.max_jobs", "--jobs-max", "",
         "jobs kept at once, finished ones included; the oldest finished go first", &P::jobs_max, 1,
         100'000},
        {"jobs.max_age", "--jobs-max-age", "", "how long a finished job is kept", &P::jobs_max_age,
         1, 365 * day, "seconds"},
        {"jobs.concurrency", "--jobs-concurrency", "",
         "jobs run at once (each spreads its chunks over every free slot)", &P::jobs_concurrency, 1,
         64},
        {"auth.api_keys",
         "--api-key",
         "",
         "a key clients must present (Bearer or X-Api-Key) on relayed routes; repeatable",
         &P::api_keys,
         0,
         0,
         "",
         {},
         false,
         true},
        {"auth.api_key_file", "--api-key-file", "LLAMA_POOL_API_KEY_FILE",
         "file with one client key per line ('#' starts a comment)", &P::api_key_file},
        {"auth.metrics_key",
         "--metrics-key",
         "LLAMA_POOL_METRICS_KEY",
         "key required by /metrics; empty = open",
         &P::metrics_key,
         0,
         0,
         "",
         {},
         false,
         true},
        {"auth.rate_limit_rps", "--rate-limit-rps", "",
         "requests per second per client key (or address); 0 = no limit", &P::rate_limit_rps, 0,
         1e6},
        {"auth.rate_limit_burst", "--rate-limit-burst", "",
         "requests a client may send at once above the rate", &P::rate_limit_burst, 1, 1e6},
        {"auth.admin_key",
         "--admin-key",
         "LLAMA_POOL_ADMIN_KEY",
         "key required by /pool/* (Authorization: Bearer KEY or X-Api-Key); empty = only "
         "clients on this machine",
         &P::admin_key,
         0,
         0,
         "",
         {},
         false,
         true},
        {"log.format",
         "--log-format",
         "LLAMA_POOL_LOG_FORMAT",
         "text (key=value) or json",
         &P::log_format,
         0,
         0,
         "",
         {"text", "json"}},
        {"log.level",
         "--log-level",
         "LLAMA_POOL_LOG_LEVEL",
         "least severe level logged",
         &P::log_level,
         0,
         0,
         "",
         {"debug", "info", "warn", "error"}},
    };
    return fields;
}

namespace {

std::size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<std::size_t> row(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j) {
        row[j] = j;
    }
    for (std::size_t i = 1; i <= a.size(); ++i) {
        std::size_t diag = row[0];
        row[0] = i;
        for (std::size_t j = 1; j <= b.size(); ++j) {
            const auto up = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1])});
            diag = up;
        }
    }
    return row[b.size()];
}

// Converts a command-line or environment string into the JSON value the field expects, so
// every source goes through the same typed validation.
nlohmann::json text_to_json(const FieldSpec& f, const std::string& text) {
    return std::visit(
        [&](auto member) -> nlohmann::json {
            using T = std::remove_reference_t<decltype(PoolConfig{}.*member)>;
            if constexpr (std::is_same_v<T, bool>) {
                if (text == "true" || text == "1" || text == "yes" || text == "on") {
                    return true;
                }
                if (text == "false" || text == "0" || text == "no" || text == "off") {
                    return false;
                }
                return text;
            } else if constexpr (std::is_same_v<T, int>) {
                long long n = 0;
                const auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
                if (ec == std::errc() && p == text.data() + text.size()) {
                    return n;
                }
                return text;
            } else if constexpr (std::is_same_v<T, double>) {
                try {
                    std::size_t used = 0;
                    const double d = std::stod(text, &used);
                    if (used == text.size()) {
                        return d;
                    }
                } catch (const std::exception&) {
                }
                return text;
            } else if constexpr (std::is_same_v<T, std::string>) {
                return text;
            } else {
                return nlohmann::json::array({text});
            }
        },
        f.member);
}

// A list from one environment variable: comma-separated, blanks ignored.
std::vector<std::string> split_list(std::string_view rest) {
    std::vector<std::string> values;
    while (!rest.empty()) {
        const auto comma = rest.find(',');
        auto item = rest.substr(0, comma);
        while (!item.empty() && item.front() == ' ')
            item.remove_prefix(1);
        while (!item.empty() && item.back() == ' ')
            item.remove_suffix(1);
        if (!item.empty()) {
            values.emplace_back(item);
        }
        rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
    }
    return values;
}

// NAME=MODEL groups from flags or the environment replace the file's groups, as repeated
// list flags replace a file's list.
void apply_group_flags(const std::vector<std::string>& texts, const std::string& origin,
                       ConfigResult& result) {
    result.config.groups.clear();
    for (const auto& text : texts) {
        GroupConfig group;
        std::string error;
        if (!parse_group_flag(text, group, error)) {
            result.errors.push_back(fmt::format("{} {}: {}", origin, quote_for_error(text), error));
            continue;
        }
        result.config.groups.push_back(std::move(group));
    }
}

void apply_text(const FieldSpec& f, const std::string& text, const std::string& origin,
                PoolConfig& config, std::vector<std::string>& errors) {
    // Applied as it is, not through json::dump() and a re-parse: a value is whatever bytes
    // the shell passed, and dump() throws on bytes that are not UTF-8 (a Latin-1 file name).
    apply_field_value(f, text_to_json(f, text), origin, config, errors);
}

}  // namespace

std::string suggest_key(std::string_view key) {
    std::string_view best;
    std::size_t best_d = 4;
    for (const auto& f : config_fields()) {
        const auto d = edit_distance(key, f.key);
        if (d < best_d) {
            best_d = d;
            best = f.key;
        }
    }
    return best.empty() ? "" : fmt::format(" (did you mean \"{}\"?)", best);
}

std::string help_text() {
    std::string out =
        "usage: llama-pool [--config FILE] [options]\n"
        "\n"
        "One URL in front of a supervised pool of llama-server workers. Precedence: flags over\n"
        "environment variables over the config file over built-in defaults.\n"
        "\n"
        "  --config FILE          JSON config file, comments allowed (env LLAMA_POOL_CONFIG)\n"
        "  --check-config         validate, print the effective config and its groups as JSON,\n"
        "                         exit\n"
        "  --group NAME=MODEL     a model group serving MODEL under NAME (repeatable; replaces\n"
        "                         the config file's groups; env LLAMA_POOL_GROUPS=N=M,N=M)\n"
        "  --help                 this text\n"
        "  --version              print the version\n"
        "\n";
    for (const auto& f : config_fields()) {
        if (f.flag.empty()) {
            continue;
        }
        std::string left(f.flag);
        const bool is_bool = std::holds_alternative<bool PoolConfig::*>(f.member);
        if (!is_bool) {
            left += f.unit == "seconds" ? " SECONDS" : " VALUE";
        }
        const auto defaults = config_to_json(PoolConfig{});
        const auto dot = f.key.find('.');
        const auto& def =
            defaults[std::string(f.key.substr(0, dot))][std::string(f.key.substr(dot + 1))];
        std::string def_text = def.is_string() ? def.get<std::string>() : def.dump();
        out += fmt::format("  {:<30} {}", left, f.help);
        if (!def_text.empty() && def_text != "[]" && def_text != "\"\"") {
            out += fmt::format(" [default: {}]", def_text);
        }
        if (!f.env.empty()) {
            out += fmt::format(" (env {})", f.env);
        }
        out += fmt::format(" (config {})\n", f.key);
    }
    return out;
}

ConfigResult load_config(const std::vector<std::string>& args, const EnvLookup& env) {
    ConfigResult result;
    // First pass: find actions and the config file, so the file applies before flags.
    for (std::size_t i = 0; i < args.size(); ++i) {
        const auto& a = args[i];
        if (a == "--help" || a == "-h") {
            result.action = CliAction::help;
            return result;
        }
        if (a == "--version") {
            result.action = CliAction::version;
            return result;
        }
        if (a == "--check-config") {
            result.action = CliAction::check_config;
        } else if (a == "--config" && i + 1 < args.size()) {
            result.config_file = args[++i];
        } else if (a.rfind("--config=", 0) == 0) {
            result.config_file = a.substr(9);
        }
    }
    if (result.config_file.empty()) {
        if (auto from_env = env("LLAMA_POOL_CONFIG"); from_env && !from_env->empty()) {
            result.config_file = *from_env;
        }
    }
    if (!result.config_file.empty()) {
        std::ifstream in(result.config_file);
        if (!in) {
            result.errors.push_back(fmt::format("{}: cannot read the config file",
                                                quote_for_error(result.config_file)));
        } else {
            std::stringstream text;
            text << in.rdbuf();
            apply_config_json(text.str(), result.config_file, result.config, result.errors);
        }
    }
    for (const auto& f : config_fields()) {
        if (f.env.empty()) {
            continue;
        }
        if (auto value = env(std::string(f.env)); value && !value->empty()) {
            if (const auto list = std::get_if<std::vector<std::string> PoolConfig::*>(&f.member)) {
                // A list from one variable: comma-separated, blanks ignored.
                result.config.** list = split_list(*value);
                continue;
            }
            apply_text(f, *value, fmt::format("environment {}", f.env), result.config,
                       result.errors);
        }
    }
    if (auto from_env = env("LLAMA_POOL_GROUPS"); from_env && !from_env->empty()) {
        apply_group_flags(split_list(*from_env), "environment LLAMA_POOL_GROUPS", result);
    }
    std::vector<std::string> group_flags;
    std::set<std::string_view> lists_from_flags;
    for (std::size_t i = 0; i < args.size(); ++i) {
        std::string a = args[i];
        std::optional<std::string> inline_value;
        if (const auto eq = a.find('='); a.rfind("--", 0) == 0 && eq != std::string::npos) {
            inline_value = a.substr(eq + 1);
            a = a.substr(0, eq);
        }
        if (a == "--config") {
            i += inline_value ? 0 : 1;
            continue;
        }
        if (a == "--check-config") {
            continue;
        }
        if (a == "--group") {
            if (inline_value) {
                group_flags.push_back(*inline_value);
            } else if (i + 1 < args.size()) {
                group_flags.push_back(args[++i]);
            } else {
                result.errors.push_back("option --group needs a value (NAME=MODEL)");
            }
            continue;
        }
        const FieldSpec* field = nullptr;
        for (const auto& f : config_fields()) {
            if (!f.flag.empty() && f.flag == a) {
                field = &f;
            }
        }
        if (field == nullptr) {
            result.errors.push_back(
                fmt::format("unknown option {} (see llama-pool --help)", quote_for_error(args[i])));
            continue;
        }
        std::string value;
        if (std::holds_alternative<bool PoolConfig::*>(field->member) && !inline_value) {
            value = "true";
        } else if (inline_value) {
            value = *inline_value;
        } else if (i + 1 < args.size()) {
            value = args[++i];
        } else {
            result.errors.push_back(fmt::format("option {} needs a value", a));
            continue;
        }
        if (const auto list = std::get_if<std::vector<std::string> PoolConfig::*>(&field->member)) {
            // Repeated flags accumulate and replace what the file or environment gave.
            auto& values = result.config.**list;
            if (!lists_from_flags.count(field->key)) {
                values.clear();
                lists_from_flags.insert(field->key);
            }
            values.push_back(value);
            continue;
        }
        apply_text(*field, value, fmt::format("option {}", a), result.config, result.errors);
    }
    if (!group_flags.empty()) {
        apply_group_flags(group_flags, "option --group", result);
    }
    if (result.errors.empty()) {
        validate_config(result.config, result.errors);
    }
    return result;
}

}  // namespace llama_pool
