#include "app/serve.hpp"

#include <atomic>
#include <thread>

#include "common/socket.hpp"
#include "proxy/backend_registry.hpp"
#include "proxy/proxy_server.hpp"
#include "supervisor/supervisor.hpp"
#include "workloads/workload_routes.hpp"

namespace llama_pool {

namespace {

void reload_config(const std::function<ConfigResult()>& reload, Supervisor& supervisor,
                   Logger& log) {
    const auto loaded = reload();
    if (!loaded.ok()) {
        // An invalid new config leaves the running pool untouched.
        log.error("pool", "config_reload_rejected", {{"errors", loaded.errors}});
        return;
    }
    const auto current = supervisor.config();
    std::vector<std::string> needs_restart;
    for (const auto& key : changed_keys(current, loaded.config)) {
        if (key.rfind("workers.", 0) != 0) {
            needs_restart.push_back(key);
        }
    }
    if (!needs_restart.empty()) {
        log.warn("pool", "config_reload_partial",
                 {{"not_applied_until_pool_restart", needs_restart}});
    }
    const auto started = supervisor.rolling_restart(loaded.config);
    log.info("pool", "config_reloaded",
             {{"changed", changed_keys(current, loaded.config)},
              {"rollout", started == Supervisor::RolloutStart::started ? "started"
                          : started == Supervisor::RolloutStart::already_running
                              ? "already running, reload ignored"
                              : "shutting down"}});
}

}  // namespace

int serve(const PoolConfig& config, Logger& log, const sigset_t& signals,
          const std::function<ConfigResult()>& reload) {
    SeededRandom random;
    SteadyTimeSource time;
    RegistryOptions options;
    options.policy = parse_balancer_policy(config.balancer);
    options.queue_max = static_cast<std::size_t>(config.queue_max);
    options.breaker.consecutive_failures = config.breaker_failures;
    options.breaker.failure_ratio = config.breaker_failure_ratio;
    options.breaker.window = from_seconds(config.breaker_window);
    options.breaker.base_ejection = from_seconds(config.breaker_ejection);
    options.breaker.max_ejection = from_seconds(config.breaker_max_ejection);
    options.breaker.half_open_trials = config.breaker_half_open_trials;
    BackendRegistry registry(random, time, options);

    auto client_keys = config.api_keys;
    if (!config.api_key_file.empty()) {
        std::string error;
        if (!load_key_file(config.api_key_file, client_keys, error)) {
            log.error("pool", "api_key_file_unreadable", {{"error", error}});
            return 1;
        }
    }
    if (!client_keys.empty()) {
        log.info("pool", "client_auth", {{"keys", client_keys.size()}});  // never the keys
    }
    // Each client connection costs a descriptor, and one to a worker while it is relayed.
    const auto fds = raise_fd_limit();
    const auto needed = 2 * static_cast<std::uint64_t>(config.max_connections) + 64;
    log.log(fds.after < needed ? LogLevel::warn : LogLevel::info, "pool", "fd_limit",
            {{"soft_limit_before", fds.before},
             {"soft_limit", fds.after},
             {"max_connections", config.max_connections},
             {"enough", fds.after >= needed}});
    Supervisor supervisor(config, log, registry, random);
    PoolMetrics metrics(LLAMA_POOL_VERSION);
    metrics.attach(&registry, &supervisor);
    ProxyServer proxy(config, registry, &supervisor, log, random, metrics, std::move(client_keys));
    WorkloadRoutes workloads(config, proxy.relay(), registry, log);
    workloads.start();
    proxy.set_workload_routes(&workloads);
    metrics.attach_jobs([&workloads] { return workloads.job_counts(); });
    // Scrapes may still come while the objects above are torn down.
    struct DetachJobs {
        PoolMetrics& metrics;
        ~DetachJobs() { metrics.attach_jobs({}); }
    } detach_jobs{metrics};

    std::string error;
    if (!proxy.start(error)) {
        log.error("pool", "listen_failed",
                  {{"host", config.host}, {"port", config.port}, {"error", error}});
        return 1;
    }
    log.info("pool", "listening",
             {{"host", config.host}, {"port", proxy.port()}, {"version", LLAMA_POOL_VERSION}});
    supervisor.start();

    std::atomic<bool> shutdown_done{false};
    std::thread shutdown_thread;
    bool forced = false;
    while (!shutdown_done) {
        timespec tick{0, 100'000'000};
        const int sig = ::sigtimedwait(&signals, nullptr, &tick);
        if (sig < 0) {
            continue;
        }
        if (sig == SIGHUP) {
            if (!shutdown_thread.joinable()) {
                reload_config(reload, supervisor, log);
            }
            continue;
        }
        if (!shutdown_thread.joinable()) {
            log.info("pool", "shutdown_requested",
                     {{"signal", ::strsignal(sig)}, {"grace_s", config.shutdown_grace}});
            // Graceful: no new connections, in-flight requests (streams included) finish up
            // to the grace, then the workers stop. A second signal cuts this short.
            shutdown_thread = std::thread([&] {
                // Jobs are not requests a client waits on: they end now, as interrupted
                // (the record says so after the restart), while requests get the grace.
                workloads.stop();
                proxy.shutdown(Clock::now() + from_seconds(config.shutdown_grace));
                supervisor.stop(Duration::zero());
                shutdown_done = true;
            });
        } else {
            log.warn("pool", "shutdown_forced", {{"signal", ::strsignal(sig)}});
            forced = true;
            proxy.http().stop_accepting();
            proxy.abort();
            supervisor.hurry();
        }
    }
    shutdown_thread.join();
    log.info("pool", "stopped", {{"forced", forced}});
    return forced ? 1 : 0;
}

}  // namespace llama_pool
