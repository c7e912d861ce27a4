#include "supervisor/supervisor.hpp"

#include <fmt/format.h>
#include <sys/random.h>

#include <thread>

#include "common/socket.hpp"
#include "supervisor/worker_args.hpp"

namespace llama_pool {

std::string random_key() {
    unsigned char bytes[16] = {};
    std::size_t got = 0;
    while (got < sizeof bytes) {
        const auto n = ::getrandom(bytes + got, sizeof bytes - got, 0);
        if (n > 0) {
            got += static_cast<std::size_t>(n);
        }
    }
    std::string out;
    for (const auto b : bytes) {
        out += fmt::format("{:02x}", b);
    }
    return out;
}

Supervisor::Supervisor(PoolConfig config, Logger& log, WorkerListener& listener,
                       RandomSource& random)
    : config_(std::move(config)), log_(log), listener_(listener), random_(random) {
    threads_ = llama_pool::threads_per_worker(config_.threads, config_.workers,
                                              std::thread::hardware_concurrency());
    // Workers listen on loopback with a key only the pool knows, so nothing else on the box
    // can reach them around the pool's limits and accounting.
    api_key_ = random_key();
}

Supervisor::~Supervisor() {
    stop(Duration::zero());
}

void Supervisor::start() {
    log_.info("supervisor", "starting",
              {{"workers", config_.workers},
               {"threads_per_worker", threads_},
               {"threads_mode", config_.threads == 0 ? "auto" : "configured"},
               {"cores", std::thread::hardware_concurrency()},
               {"slots_per_worker", config_.parallel}});
    std::lock_guard lock(mutex_);
    for (int i = 0; i < config_.workers; ++i) {
        WorkerSettings settings;
        settings.id = std::to_string(i);
        settings.config = config_;
        settings.threads = threads_;
        settings.api_key = api_key_;
        settings.pick_port = [this] { return pick_port(); };
        workers_.push_back(std::make_unique<Worker>(std::move(settings), log_, listener_, random_));
    }
    for (auto& w : workers_) {
        w->start();
    }
}

void Supervisor::stop(Duration drain_grace) {
    std::vector<Worker*> workers;
    {
        std::lock_guard lock(mutex_);
        for (auto& w : workers_) {
            workers.push_back(w.get());
        }
    }
    for (auto* w : workers) {
        w->request_stop(drain_grace);
    }
    for (auto* w : workers) {
        w->join();
    }
}

void Supervisor::hurry() {
    std::lock_guard lock(mutex_);
    for (auto& w : workers_) {
        w->request_stop(Duration::zero());
    }
}

std::vector<WorkerStatus> Supervisor::status() const {
    std::lock_guard lock(mutex_);
    std::vector<WorkerStatus> out;
    for (const auto& w : workers_) {
        out.push_back(w->status());
    }
    return out;
}

std::optional<std::vector<std::string>> Supervisor::worker_output(const std::string& id) const {
    std::lock_guard lock(mutex_);
    for (const auto& w : workers_) {
        if (w->id() == id) {
            return w->recent_output();
        }
    }
    return std::nullopt;
}

bool Supervisor::restart_worker(const std::string& id) {
    std::lock_guard lock(mutex_);
    for (auto& w : workers_) {
        if (w->id() == id) {
            w->request_restart();
            return true;
        }
    }
    return false;
}

std::uint16_t Supervisor::pick_port() {
    std::lock_guard lock(mutex_);
    // Avoid handing two workers the same port while one of them has not bound it yet.
    for (int attempt = 0; attempt < 64; ++attempt) {
        const auto port = pick_free_port("127.0.0.1");
        if (port != 0 && !recent_ports_.count(port)) {
            recent_ports_.insert(port);
            if (recent_ports_.size() > 4096) {
                recent_ports_.erase(recent_ports_.begin());
            }
            return port;
        }
    }
    return pick_free_port("127.0.0.1");
}

}  // namespace llama_pool
