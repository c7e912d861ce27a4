#include "app/serve.hpp"

#include <atomic>
#include <thread>

#include "proxy/backend_registry.hpp"
#include "proxy/proxy_server.hpp"
#include "supervisor/supervisor.hpp"

namespace llama_pool {

namespace {

Duration from_seconds(double s) {
    return std::chrono::duration_cast<Duration>(std::chrono::duration<double>(s));
}

}  // namespace

int serve(const PoolConfig& config, Logger& log, const sigset_t& signals) {
    SeededRandom random;
    BackendRegistry registry(random);
    Supervisor supervisor(config, log, registry, random);
    ProxyServer proxy(config, registry, &supervisor, log, random, LLAMA_POOL_VERSION);

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
            log.warn("pool", "reload_unsupported",
                     {{"signal", "SIGHUP"}, {"detail", "config reload is not implemented yet"}});
            continue;
        }
        if (!shutdown_thread.joinable()) {
            log.info("pool", "shutdown_requested",
                     {{"signal", ::strsignal(sig)}, {"grace_s", config.shutdown_grace}});
            // Graceful: no new connections, in-flight requests (streams included) finish up
            // to the grace, then the workers stop. A second signal cuts this short.
            shutdown_thread = std::thread([&] {
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
