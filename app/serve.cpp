#include "app/serve.hpp"

#include <atomic>
#include <thread>

#include "common/socket.hpp"
#include "proxy/group_set.hpp"
#include "proxy/proxy_server.hpp"
#include "workloads/workload_routes.hpp"

namespace llama_pool {

namespace {

void reload_config(const std::function<ConfigResult()>& reload, PoolConfig& running,
                   GroupSet& groups, Logger& log) {
    const auto loaded = reload();
    if (!loaded.ok()) {
        // An invalid new config leaves the running pool untouched.
        log.error("pool", "config_reload_rejected", {{"errors", loaded.errors}});
        return;
    }
    std::vector<std::string> needs_restart;
    for (const auto& key : changed_keys(running, loaded.config)) {
        if (key.rfind("workers.", 0) != 0 && key != "groups") {
            needs_restart.push_back(key);
        }
    }
    // Groups whose worker settings changed roll over; the others go on serving untouched.
    const auto rolled = groups.reload(loaded.config, needs_restart);
    if (!needs_restart.empty()) {
        log.warn("pool", "config_reload_partial",
                 {{"not_applied_until_pool_restart", needs_restart}});
    }
    log.info("pool", "config_reloaded",
             {{"changed", changed_keys(running, loaded.config)},
              {"rolled_over", rolled},
              {"rollout", groups.rollout_running() ? "running" : "none needed"}});
    running = loaded.config;
}

}  // namespace

int serve(const PoolConfig& config, Logger& log, const sigset_t& signals,
          const std::function<ConfigResult()>& reload) {
    SeededRandom random;
    SteadyTimeSource time;
    PoolMetrics metrics(LLAMA_POOL_VERSION);
    GroupSet groups(config, log, random, time, metrics);

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
    std::vector<std::string> tenant_names;
    for (const auto& t : config.tenants) {
        tenant_names.push_back(t.name);
    }
    std::vector<PoolMetrics::GroupSource> sources;
    for (const auto& g : groups.groups()) {
        sources.push_back({g->metrics_label(), &g->registry(), &g->supervisor(), tenant_names});
    }
    metrics.attach(std::move(sources));
    struct DetachGroups {
        PoolMetrics& metrics;
        ~DetachGroups() { metrics.attach(std::vector<PoolMetrics::GroupSource>{}); }
    } detach_groups{metrics};
    ProxyServer proxy(config, groups, log, metrics, std::move(client_keys));
    WorkloadRoutes workloads(config, groups, log);
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
    groups.start();

    PoolConfig running_config = config;
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
                reload_config(reload, running_config, groups, log);
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
                const auto cut = proxy.shutdown(Clock::now() + from_seconds(config.shutdown_grace));
                // One line per step, so that a slow stop shows which step took the time.
                log.info("pool", "requests_ended", {{"cut", cut}});
                groups.stop(Duration::zero());
                log.info("pool", "workers_stopped", {});
                shutdown_done = true;
            });
        } else {
            log.warn("pool", "shutdown_forced", {{"signal", ::strsignal(sig)}});
            forced = true;
            proxy.http().stop_accepting();
            proxy.abort();
            groups.hurry();
        }
    }
    shutdown_thread.join();
    log.info("pool", "stopped", {{"forced", forced}});
    return forced ? 1 : 0;
}

}  // namespace llama_pool
