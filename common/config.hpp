#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/group_config.hpp"
#include "common/tenant_config.hpp"

namespace llama_pool {

// The whole configuration as plain values with their defaults in place. Durations are
// seconds. Compared with == on reload to see what changed.
struct PoolConfig {
    // listen
    std::string host = "127.0.0.1";
    int port = 8081;
    int max_connections = 1024;
    double shutdown_grace = 30;

    // workers
    int workers = 2;
    int max_total_workers = 0;  // llama-server processes across all groups; 0 = no limit
    std::string llama_server = "llama-server";
    std::string model;
    int threads = 0;  // 0 = auto: the machine's cores divided among the workers
    int ctx_size = 4096;
    int parallel = 2;  // slots per worker
    std::vector<std::string> worker_args;
    bool legacy_flags = false;  // accepted for old configs; no known worker needs it
    double startup_timeout = 300;
    double warmup_timeout = 120;
    double health_interval = 2;
    double health_timeout = 3;
    int health_failures = 3;
    double idle_probe_interval = 60;
    // With requests in flight and no progress (decode counters, relayed bytes) for this
    // long, a worker is out and replaced. Longer than the slowest prompt batch; 0 = off.
    double stall_timeout = 120;
    double restart_backoff_base = 1;
    double restart_backoff_cap = 60;
    int crash_loop_restarts = 5;
    double crash_loop_window = 300;
    double stop_grace = 10;

    // model groups; empty: the workers.* settings form one group ("default")
    std::vector<GroupConfig> groups;

    // proxy
    double connect_timeout = 5;
    double response_timeout = 600;
    double stream_idle_timeout = 300;
    double total_timeout = 3600;
    double queue_timeout = 300;
    int max_body_bytes = 32 * 1024 * 1024;
    int max_header_bytes = 16 * 1024;
    double head_timeout = 10;
    double body_timeout = 60;
    double keep_alive_timeout = 60;
    std::string balancer = "least-loaded";  // least-loaded | round-robin | prefix-affinity
    int affinity_prefix_chars = 256;
    int queue_max = 256;         // requests waiting for a slot; beyond it, 503 at once
    double priority_aging = 30;  // a waiter's priority class rises by one per this; 0: never
    // requests that take no generation slot (/tokenize, /props, ...) in flight to one worker
    int light_connections = 8;
    // tenants of the admission queue; clients none names are each their own tenant
    std::vector<TenantConfig> tenants;
    int retry_attempts = 3;  // attempts per request, the first included
    double retry_backoff_base = 0.25;
    double retry_backoff_cap = 4;
    double retry_budget_ratio = 0.2;
    int retry_budget_min = 3;
    int breaker_failures = 5;
    double breaker_failure_ratio = 0.5;
    double breaker_window = 30;
    double breaker_ejection = 30;
    double breaker_max_ejection = 300;
    int breaker_half_open_trials = 1;

    // cache: replies reused instead of generated again (response cache, Idempotency-Key)
    bool cache_enabled = false;  // deterministic non-stream replies, keyed by route and body
    int cache_max_bytes = 64 * 1024 * 1024;
    double cache_ttl = 600;
    double idempotency_window = 60;  // completed keyed replies kept this long; 0 = keys ignored
    int idempotency_max_bytes = 16 * 1024 * 1024;

    // upstreams the pool fronts but does not manage (other machines, other pools)
    std::vector<std::string> upstreams;  // http://host:port
    std::string upstream_api_key;        // sent to them as a Bearer token when set
    double dns_interval = 5;             // how often dns:// names are resolved again

    // summarize: POST /v1/summarize and summarize jobs (a request may override the sizes)
    int summarize_max_chunk_chars = 2048;
    int summarize_overlap = 200;
    int summarize_levels = 6;
    int summarize_max_text_chars = 2'000'000;
    std::string summarize_map_prompt;  // empty: the built-in prompt
    std::string summarize_reduce_prompt;

    // jobs: POST /v1/jobs
    std::string jobs_data_dir = "llama-pool-data";  // finished results survive restarts here
    int jobs_max = 100;
    double jobs_max_age = 86400;
    int jobs_concurrency = 2;

    // auth
    std::string admin_key;              // when set, /pool/* requires it (Bearer or X-Api-Key)
    std::vector<std::string> api_keys;  // when any, every relayed route requires one
    std::string api_key_file;           // one key per line, '#' comments; adds to api_keys
    std::string metrics_key;            // when set, /metrics requires it
    double rate_limit_rps = 0;          // per API key (or client address); 0 = off
    double rate_limit_burst = 20;

    // log
    std::string log_format = "text";
    std::string log_level = "info";

    bool operator==(const PoolConfig&) const = default;
};

// What the command line asked for besides configuration.
enum class CliAction { run, help, version, check_config };

struct ConfigResult {
    PoolConfig config;
    CliAction action = CliAction::run;
    std::string config_file;          // empty when none was used
    std::vector<std::string> errors;  // every problem found, each one line; empty when valid
    bool ok() const { return errors.empty(); }
};

using EnvLookup = std::function<std::optional<std::string>(const std::string& name)>;

// Reads defaults, then the config file (--config or LLAMA_POOL_CONFIG), then environment
// variables, then flags: later sources win. All errors are collected, none stops the scan.
ConfigResult load_config(const std::vector<std::string>& args, const EnvLookup& env);

// Parses a JSON-with-comments document onto `config`, appending errors that name `origin`.
void apply_config_json(const std::string& text, const std::string& origin, PoolConfig& config,
                       std::vector<std::string>& errors);

// Cross-field and filesystem checks (model exists, llama-server executable, ranges that
// depend on each other).
void validate_config(const PoolConfig& config, std::vector<std::string>& errors);

// Secrets (keys) are shown as "<redacted>" unless asked for.
nlohmann::ordered_json config_to_json(const PoolConfig& config, bool show_secrets = false);
// The groups as the config file spells them (overrides without their "workers." prefix).
nlohmann::ordered_json groups_to_json(const std::vector<GroupConfig>& groups);
// What --check-config prints: config_to_json with the groups as they will run (workers,
// min_workers and the default filled in).
nlohmann::ordered_json checked_config_json(const PoolConfig& config);
// The keys ("section.name") whose values differ between two configs.
std::vector<std::string> changed_keys(const PoolConfig& a, const PoolConfig& b);
std::string help_text();

// A group with every setting resolved: the spec with workers/min_workers filled in, and the
// pool's config with the group's overrides applied (model, workers, threads, ...).
struct ResolvedGroup {
    GroupConfig spec;
    PoolConfig config;
    bool implicit = false;  // the one group made from workers.* when `groups` is absent
};
// The groups a config describes, in order; never empty. `cores` divides threads among the
// workers that can run at once (all groups' workers, or the budget when it is smaller).
std::vector<ResolvedGroup> resolve_groups(const PoolConfig& config, unsigned cores);
// The one group name used when the config has no `groups`.
inline constexpr std::string_view kImplicitGroup = "default";

struct UpstreamAddress {
    std::string host;
    std::uint16_t port = 0;
    bool discover = false;  // dns://: host is a name re-resolved into many upstreams
    double weight = 1;      // ?weight=N: its share of traffic relative to the others
};
// Parses "http://host:port" or "dns://name:port", optionally with "?weight=N" (a trailing
// slash allowed; IPv6 as [addr]). False with `error`.
bool parse_upstream_url(const std::string& url, UpstreamAddress& out, std::string& error);

// Resolves a program name through PATH; returns it unchanged when it contains a slash.
std::string resolve_executable(const std::string& name);

}  // namespace llama_pool
