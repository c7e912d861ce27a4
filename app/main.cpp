#include <fmt/format.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <filesystem>

#include "app/cli.hpp"
#include "app/serve.hpp"
#include "common/config.hpp"
#include "common/config_fields.hpp"
#include "common/log.hpp"
#include "workloads/job_store.hpp"

int main(int argc, char** argv) {
    using namespace llama_pool;
    const auto loaded = load_config_from_process(argc, argv);
    switch (loaded.action) {
        case CliAction::help:
            fmt::print("{}", help_text());
            return 0;
        case CliAction::version:
            fmt::print("llama-pool {}\n", LLAMA_POOL_VERSION);
            return 0;
        default:
            break;
    }
    if (!loaded.ok()) {
        for (const auto& e : loaded.errors) {
            fmt::print(stderr, "llama-pool: error: {}\n", e);
        }
        return 2;
    }
    if (loaded.action == CliAction::check_config) {
        // Replace, for display only: paths and arguments need not be UTF-8.
        fmt::print("{}\n", checked_config_json(loaded.config)
                               .dump(2, ' ', false, nlohmann::json::error_handler_t::replace));
        return 0;
    }

    // Persistence was asked for, so a data directory the pool cannot write is a config error
    // (exit 2, before any worker starts), not a warning per job while results are lost. The
    // check runs here and not in --check-config, which must not create directories.
    if (!loaded.config.jobs_data_dir.empty()) {
        const auto dir = (std::filesystem::path(loaded.config.jobs_data_dir) / "jobs").string();
        if (std::string error; !prepare_job_dir(dir, error)) {
            fmt::print(stderr,
                       "llama-pool: error: key \"jobs.data_dir\": {} ({}); job records could "
                       "not be kept. Make the directory writable by uid {} (e.g. chown it, or "
                       "mount a writable volume there), or set jobs.data_dir to \"\" "
                       "(--data-dir '' or LLAMA_POOL_DATA_DIR=) to keep jobs in memory only\n",
                       quote_for_error(loaded.config.jobs_data_dir), error, ::geteuid());
            return 2;
        }
    }

    // Block the signals we handle before any thread exists, so every thread inherits the
    // mask and they are delivered only to serve()'s sigwait. Children get a clean mask back.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    std::signal(SIGPIPE, SIG_IGN);

    Logger log(loaded.config.log_format == "json" ? LogFormat::json : LogFormat::text);
    log.set_min_level(loaded.config.log_level == "debug"   ? LogLevel::debug
                      : loaded.config.log_level == "warn"  ? LogLevel::warn
                      : loaded.config.log_level == "error" ? LogLevel::error
                                                           : LogLevel::info);
    if (!loaded.config_file.empty()) {
        log.info("pool", "config_loaded", {{"file", loaded.config_file}});
    }
    return serve(loaded.config, log, signals,
                 [argc, argv] { return load_config_from_process(argc, argv); });
}
