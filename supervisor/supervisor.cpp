#include "supervisor/supervisor.hpp"

#include <fmt/format.h>
#include <sys/random.h>

#include <algorithm>
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
                       RandomSource& random, SupervisorOptions options)
    : config_(std::move(config)),
      options_(std::move(options)),
      log_(log),
      listener_(listener),
      random_(random) {
    threads_ = llama_pool::threads_per_worker(config_.threads, config_.workers,
                                              std::thread::hardware_concurrency());
    // Workers listen on loopback with a key only the pool knows, so nothing else on the box
    // can reach them around the pool's limits and accounting (each worker reads it from a
    // private file while it starts: see Worker::spawn).
    api_key_ = random_key();
}

Supervisor::~Supervisor() {
    stop(Duration::zero());
}

std::unique_ptr<Worker> Supervisor::make_worker_locked(const PoolConfig& config) {
    if (options_.budget != nullptr && !options_.budget->try_acquire()) {
        return nullptr;
    }
    WorkerSettings settings;
    settings.id = options_.id_prefix + std::to_string(next_id_++);
    settings.config = config;
    settings.threads = llama_pool::threads_per_worker(config.threads, config.workers,
                                                      std::thread::hardware_concurrency());
    settings.api_key = api_key_;
    settings.pick_port = [this] { return pick_port(); };
    return std::make_unique<Worker>(std::move(settings), log_, listener_, random_);
}

void Supervisor::start() {
    log_.info("supervisor", "starting",
              {{"workers", config_.workers},
               {"threads_per_worker", threads_},
               {"threads_mode", config_.threads == 0 ? "auto" : "configured"},
               {"cores", std::thread::hardware_concurrency()},
               {"slots_per_worker", config_.parallel}});
    std::lock_guard lock(mutex_);
    const int initial = options_.initial_workers < 0 ? config_.workers : options_.initial_workers;
    for (int i = 0; i < initial; ++i) {
        auto worker = make_worker_locked(config_);
        if (!worker) {
            log_.warn("supervisor", "worker_budget_full", {{"wanted", initial}, {"started", i}});
            break;
        }
        workers_.push_back(std::move(worker));
    }
    for (auto& w : workers_) {
        w->start();
    }
    for (std::size_t i = 0; i < config_.upstreams.size(); ++i) {
        UpstreamAddress address;
        std::string error;
        if (!parse_upstream_url(config_.upstreams[i], address, error)) {
            continue;  // validated at load
        }
        if (address.discover) {
            discovered_.push_back({"u" + std::to_string(i), address, {}});
            continue;
        }
        upstreams_.push_back(std::make_unique<UpstreamMonitor>("u" + std::to_string(i), address,
                                                               config_, log_, listener_));
        upstreams_.back()->start();
    }
    if (!discovered_.empty()) {
        discovery_thread_ = std::thread([this] { run_discovery(); });
    }
}

void Supervisor::run_discovery() {
    std::unique_lock lock(mutex_);
    while (!stopping_) {
        for (auto& target : discovered_) {
            lock.unlock();
            std::string error;
            const auto addresses = resolve_all(target.address.host, error);
            lock.lock();
            if (stopping_) {
                break;
            }
            if (!error.empty()) {
                // Keep what we have: a DNS hiccup must not drain a healthy pool.
                log_.warn("supervisor", "dns_resolve_failed",
                          {{"name", target.address.host}, {"error", error}});
                continue;
            }
            sync_discovered_locked(target, addresses, lock);
        }
        cv_.wait_for(lock, from_seconds(config_.dns_interval), [this] { return stopping_; });
    }
}

void Supervisor::sync_discovered_locked(DiscoveredName& target,
                                        const std::vector<std::string>& addresses,
                                        std::unique_lock<std::mutex>& lock) {
    const std::set<std::string> now(addresses.begin(), addresses.end());
    std::vector<std::unique_ptr<UpstreamMonitor>> gone;
    for (const auto& known : std::set<std::string>(target.known)) {
        if (now.count(known)) {
            continue;
        }
        const auto id = target.id + "/" + known;
        for (auto it = upstreams_.begin(); it != upstreams_.end(); ++it) {
            if ((*it)->id() == id) {
                gone.push_back(std::move(*it));
                upstreams_.erase(it);
                break;
            }
        }
        target.known.erase(known);
        log_.info("supervisor", "upstream_vanished",
                  {{"worker", id}, {"name", target.address.host}, {"address", known}});
    }
    for (const auto& address : now) {
        if (target.known.count(address)) {
            continue;
        }
        const auto id = target.id + "/" + address;
        upstreams_.push_back(std::make_unique<UpstreamMonitor>(
            id, UpstreamAddress{address, target.address.port, false, target.address.weight},
            config_, log_, listener_));
        upstreams_.back()->start();
        target.known.insert(address);
        log_.info("supervisor", "upstream_discovered",
                  {{"worker", id}, {"name", target.address.host}, {"address", address}});
    }
    if (gone.empty()) {
        return;
    }
    // Drain outside the lock: requests in flight keep their upstream until they end; no new
    // ones go there. Then forget it, so its status and metrics go too.
    lock.unlock();
    for (auto& monitor : gone) {
        monitor->request_stop();
        monitor->join();
        listener_.worker_removed(monitor->id());
    }
    gone.clear();
    lock.lock();
}

void Supervisor::stop(Duration drain_grace) {
    std::lock_guard stop_lock(stop_mutex_);
    {
        std::lock_guard lock(mutex_);
        stopping_ = true;
        for (auto& w : workers_) {
            w->request_stop(drain_grace);
        }
    }
    cv_.notify_all();
    // Discovery adds and removes upstream monitors; it must be done before we stop them.
    if (discovery_thread_.joinable()) {
        discovery_thread_.join();
    }
    // The rollout thread may be adding or joining a worker; it must finish before we join
    // the rest. It sees stopping_ and ends after at most the drain of one worker.
    if (rollout_thread_.joinable()) {
        rollout_thread_.join();
    }
    // From here on nothing adds or removes workers or monitors (rolling_restart refuses
    // while stopping_), so the pointers stay valid outside the lock. The joins run without
    // mutex_: a worker that is respawning takes a port and hurry() must get through.
    std::vector<Worker*> workers;
    std::vector<UpstreamMonitor*> upstreams;
    {
        std::lock_guard lock(mutex_);
        for (auto& w : workers_) {
            w->request_stop(drain_grace);  // the ones a rollout added while we waited
            workers.push_back(w.get());
        }
        for (auto& u : upstreams_) {
            u->request_stop();
            upstreams.push_back(u.get());
        }
    }
    for (auto* w : workers) {
        w->join();
    }
    for (auto* u : upstreams) {
        u->join();
    }
}

Supervisor::RolloutStart Supervisor::rolling_restart(const PoolConfig& target) {
    std::lock_guard lock(mutex_);
    if (stopping_) {
        return RolloutStart::stopping;
    }
    if (rollout_running_) {
        return RolloutStart::already_running;
    }
    if (rollout_thread_.joinable()) {
        rollout_thread_.join();  // the previous rollout has finished; reap its thread
    }
    rollout_running_ = true;
    rollout_thread_ = std::thread([this, target] { run_rollout(target); });
    return RolloutStart::started;
}

PoolConfig Supervisor::config() const {
    std::lock_guard lock(mutex_);
    return config_;
}

bool Supervisor::rollout_running() const {
    std::lock_guard lock(mutex_);
    return rollout_running_;
}

bool Supervisor::wait_ready(Worker& worker, Duration timeout) {
    const auto deadline = Clock::now() + timeout;
    std::unique_lock lock(mutex_);
    while (!stopping_ && Clock::now() < deadline) {
        lock.unlock();
        const auto state = worker.status().state;
        lock.lock();
        if (state == WorkerState::ready) {
            return true;
        }
        if (state == WorkerState::failed) {
            return false;
        }
        cv_.wait_for(lock, milliseconds(50));
    }
    return false;
}

void Supervisor::retire(const std::string& id, Duration drain_grace) {
    Worker* worker = nullptr;
    {
        std::lock_guard lock(mutex_);
        for (auto& w : workers_) {
            if (w->id() == id) {
                worker = w.get();
            }
        }
    }
    if (worker == nullptr) {
        return;
    }
    worker->request_stop(drain_grace);
    worker->join();
    std::unique_ptr<Worker> gone;
    {
        std::lock_guard lock(mutex_);
        for (auto it = workers_.begin(); it != workers_.end(); ++it) {
            if ((*it)->id() == id) {
                gone = std::move(*it);
                workers_.erase(it);
                break;
            }
        }
    }
    if (gone && options_.budget != nullptr) {
        options_.budget->release();
    }
}

bool Supervisor::add_worker() {
    std::lock_guard lock(mutex_);
    if (stopping_ || rollout_running_ || static_cast<int>(workers_.size()) >= config_.workers) {
        return false;
    }
    auto worker = make_worker_locked(config_);
    if (!worker) {
        return false;
    }
    workers_.push_back(std::move(worker));
    workers_.back()->start();
    return true;
}

bool Supervisor::retire_one(Duration drain_grace) {
    std::vector<std::pair<std::string, bool>> candidates;  // id, ready; newest first
    {
        std::lock_guard lock(mutex_);
        if (stopping_ || rollout_running_ || workers_.empty()) {
            return false;
        }
        for (auto it = workers_.rbegin(); it != workers_.rend(); ++it) {
            candidates.emplace_back((*it)->id(), (*it)->status().state == WorkerState::ready);
        }
    }
    // A worker that cannot serve goes first; among ready ones, the least busy, newest first on
    // a tie (the older ones have the warmer caches). In-flight counts are read without mutex_:
    // the registry's lock is not one to take under ours.
    std::string chosen;
    int best = 0;
    for (const auto& [id, ready] : candidates) {
        const int score = ready ? listener_.worker_inflight(id) : -1;
        if (chosen.empty() || score < best) {
            chosen = id;
            best = score;
        }
    }
    retire(chosen, drain_grace);
    return true;
}

int Supervisor::worker_count() const {
    std::lock_guard lock(mutex_);
    return static_cast<int>(workers_.size());
}

void Supervisor::run_rollout(PoolConfig target) {
    std::vector<std::string> old_ids;
    {
        std::lock_guard lock(mutex_);
        for (const auto& w : workers_) {
            old_ids.push_back(w->id());
        }
    }
    const auto ready_timeout = std::chrono::duration_cast<Duration>(
        std::chrono::duration<double>(target.startup_timeout + target.warmup_timeout + 10));
    const auto drain_grace =
        std::chrono::duration_cast<Duration>(std::chrono::duration<double>(target.shutdown_grace));
    // An always-on group (min_workers = workers) is rolled over at its new configured size;
    // an on-demand one at the size it has now, within its new bounds.
    int min_workers = 0;
    bool always_on = true;
    {
        std::lock_guard lock(mutex_);
        always_on = options_.min_workers < 0 || options_.min_workers >= config_.workers;
        min_workers = std::min(std::max(options_.min_workers, 0), target.workers);
    }
    const int new_count =
        always_on ? target.workers
                  : std::clamp(static_cast<int>(old_ids.size()), min_workers, target.workers);
    const auto total = std::max<std::size_t>(old_ids.size(), static_cast<std::size_t>(new_count));
    log_.info("supervisor", "rollout_started",
              {{"old_workers", old_ids.size()}, {"new_workers", new_count}});
    std::string outcome = "done";
    for (std::size_t i = 0; i < total; ++i) {
        {
            std::lock_guard lock(mutex_);
            if (stopping_) {
                outcome = "interrupted by shutdown";
                break;
            }
        }
        bool old_retired = false;
        if (i < static_cast<std::size_t>(new_count)) {
            Worker* fresh = nullptr;
            {
                std::unique_lock lock(mutex_);
                auto worker = make_worker_locked(target);
                if (!worker && i < old_ids.size()) {
                    // The budget is full: give the old worker's place to its replacement
                    // (capacity dips by one worker instead of the budget being exceeded).
                    lock.unlock();
                    retire(old_ids[i], drain_grace);
                    old_retired = true;
                    lock.lock();
                    worker = make_worker_locked(target);
                }
                if (!worker) {
                    outcome =
                        "aborted: the worker budget (workers.max_total) has no place for a "
                        "replacement worker";
                    break;
                }
                workers_.push_back(std::move(worker));
                fresh = workers_.back().get();
                fresh->start();
            }
            if (!wait_ready(*fresh, ready_timeout)) {
                outcome = "aborted: replacement worker " + fresh->id() + " did not get ready (" +
                          fresh->status().last_exit_reason + ")";
                retire(fresh->id(), Duration::zero());
                break;
            }
        }
        if (i < old_ids.size() && !old_retired) {
            retire(old_ids[i], drain_grace);
        }
    }
    {
        std::lock_guard lock(mutex_);
        if (outcome == "done") {
            config_ = target;
            threads_ = llama_pool::threads_per_worker(config_.threads, config_.workers,
                                                      std::thread::hardware_concurrency());
        }
        rollout_running_ = false;
    }
    if (outcome == "done") {
        log_.info("supervisor", "rollout_done", {{"workers", new_count}});
    } else {
        log_.error("supervisor", "rollout_failed", {{"reason", outcome}});
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
    for (const auto& u : upstreams_) {
        out.push_back(u->status());
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
    // Called from worker owner threads: only the leaf lock, never mutex_ (see the lock order).
    std::lock_guard lock(ports_mutex_);
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
