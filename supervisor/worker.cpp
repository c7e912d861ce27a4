#include "supervisor/worker.hpp"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "supervisor/health_body.hpp"
#include "supervisor/port_owner.hpp"
#include "supervisor/probes.hpp"
#include "supervisor/worker_args.hpp"

namespace llama_pool {

namespace {

constexpr const char* kComponent = "supervisor";
constexpr auto kStartingTick = milliseconds(50);
constexpr auto kReadyTick = milliseconds(100);
constexpr auto kProgressLogEvery = seconds(5);

}  // namespace

std::string failure_kind(std::string_view reason) {
    const auto starts = [&](std::string_view p) { return reason.rfind(p, 0) == 0; };
    if (starts("exited during start-up") || starts("cannot start")) {
        return "startup_exit";
    }
    if (starts("start-up timeout")) {
        return "startup_timeout";
    }
    if (starts("warm-up failed") || starts("exited during warm-up")) {
        return "warmup_failed";
    }
    if (starts("unresponsive")) {
        return "unresponsive";
    }
    if (starts("port ")) {
        return "port_conflict";
    }
    if (starts("admin restart")) {
        return "admin";
    }
    return "crashed";
}

Worker::Worker(WorkerSettings settings, Logger& log, WorkerListener& listener, RandomSource& random)
    : settings_(std::move(settings)),
      log_(log),
      listener_(listener),
      random_(random),
      restart_policy_(from_seconds(settings_.config.restart_backoff_base),
                      from_seconds(settings_.config.restart_backoff_cap),
                      settings_.config.crash_loop_restarts,
                      from_seconds(settings_.config.crash_loop_window)) {
    status_.id = settings_.id;
    status_.since = std::chrono::system_clock::now();
}

Worker::~Worker() {
    request_stop(Duration::zero());
    join();
}

void Worker::start() {
    thread_ = std::thread([this] { run(); });
}

void Worker::request_restart() {
    {
        std::lock_guard lock(mutex_);
        restart_requested_ = true;
    }
    cv_.notify_all();
}

void Worker::request_stop(Duration drain_grace) {
    {
        std::lock_guard lock(mutex_);
        if (stop_requested_) {
            drain_grace_ = std::min(drain_grace_, drain_grace);
        } else {
            stop_requested_ = true;
            drain_grace_ = drain_grace;
        }
    }
    if (drain_grace == Duration::zero()) {
        wake_.notify();  // abort blocking probes at once
    }
    cv_.notify_all();
}

void Worker::join() {
    if (thread_.joinable()) {
        thread_.join();
    }
}

WorkerStatus Worker::status() const {
    std::lock_guard lock(mutex_);
    return status_;
}

std::vector<std::string> Worker::recent_output() const {
    std::lock_guard lock(output_mutex_);
    return output_.lines();
}

std::vector<std::string> Worker::tail_output(std::size_t n) const {
    std::lock_guard lock(output_mutex_);
    return output_.report_tail(n);
}

void Worker::on_output(std::string_view line) {
    {
        std::lock_guard lock(output_mutex_);
        output_.add(line);
    }
    // Start-up, warnings and errors reach the pool's log; routine lines (a request log per
    // health probe) only the ring buffer and debug level.
    const auto kind = classify_worker_line(line, output_starting_.load());
    log_.log(log_level_for(kind), "worker", "output", {{"worker", settings_.id}, {"line", line}});
}

bool Worker::set_state(WorkerState next, std::string detail) {
    WorkerState previous;
    {
        std::lock_guard lock(mutex_);
        previous = status_.state;
        if (previous == next) {
            status_.detail = std::move(detail);
            return true;
        }
        if (!transition_allowed(previous, next)) {
            log_.error(
                kComponent, "illegal_transition",
                {{"worker", settings_.id}, {"from", to_string(previous)}, {"to", to_string(next)}});
            return false;
        }
        status_.state = next;
        status_.since = std::chrono::system_clock::now();
        status_.detail = detail;
    }
    state_entered_ = Clock::now();
    nlohmann::json fields = {
        {"worker", settings_.id}, {"from", to_string(previous)}, {"to", to_string(next)}};
    if (!detail.empty()) {
        fields["detail"] = detail;
    }
    log_.info(kComponent, "worker_state", fields);
    cv_.notify_all();
    return true;
}

void Worker::wait_tick(Duration tick) {
    std::unique_lock lock(mutex_);
    cv_.wait_for(lock, tick, [this] { return stop_requested_ || restart_requested_; });
}

void Worker::run() {
    spawn();
    while (true) {
        bool restart = false;
        {
            std::lock_guard lock(mutex_);
            if (stop_requested_) {
                break;
            }
            restart = std::exchange(restart_requested_, false);
        }
        const auto state = status().state;
        if (restart) {
            restart_policy_.reset();
            if (state == WorkerState::failed || state == WorkerState::backoff) {
                backoff_until_ = Clock::now();
                set_state(WorkerState::starting, "admin restart");
                spawn();
            } else {
                fail("admin restart");
                backoff_until_ = Clock::now();
            }
            continue;
        }
        switch (state) {
            case WorkerState::starting:
            case WorkerState::loading:
                step_starting();
                wait_tick(kStartingTick);
                break;
            case WorkerState::warming:
                step_warming();
                break;
            case WorkerState::ready:
                step_ready();
                wait_tick(kReadyTick);
                break;
            case WorkerState::backoff:
                step_backoff();
                wait_tick(std::min<Duration>(kReadyTick, backoff_until_ - Clock::now()));
                break;
            case WorkerState::failed:
            case WorkerState::draining:
            case WorkerState::stopped:
                wait_tick(seconds(1));
                break;
        }
    }
    drain_and_stop();
}

void Worker::spawn() {
    const auto port = settings_.pick_port();
    // The key goes in a private file, not on the command line, which every user of the
    // machine can read (ps).
    key_file_.reset();
    if (!settings_.api_key.empty()) {
        try {
            key_file_ = std::make_unique<SecretFile>(settings_.api_key);
        } catch (const std::exception& e) {
            log_.warn(kComponent, "worker_key_file_failed",
                      {{"worker", settings_.id},
                       {"error", e.what()},
                       {"consequence", "the per-boot key goes on the worker's command line"}});
        }
    }
    const auto args = build_worker_args(settings_.config, port, settings_.threads,
                                        settings_.api_key, key_file_ ? key_file_->path() : "");
    const auto program = resolve_executable(settings_.config.llama_server);
    {
        std::lock_guard lock(output_mutex_);
        output_.clear();
    }
    output_starting_ = true;
    probe_failures_ = 0;
    completion_suspect_ = false;
    port_verified_ = false;
    try {
        child_ = std::make_unique<ChildProcess>(
            program, args, [this](std::string_view line) { on_output(line); },
            [this] { cv_.notify_all(); });
    } catch (const std::exception& e) {
        {
            std::lock_guard lock(mutex_);
            status_.port = port;
            status_.pid = 0;
        }
        fail(e.what());
        return;
    }
    spawned_at_ = Clock::now();
    last_progress_log_ = spawned_at_;
    {
        std::lock_guard lock(mutex_);
        status_.pid = child_->pid();
        status_.port = port;
        status_.capacity = 0;
    }
    // The key is a secret: log that one is used, never its value.
    log_.info(kComponent, "worker_spawned",
              {{"worker", settings_.id},
               {"pid", child_->pid()},
               {"port", port},
               {"threads", settings_.threads},
               {"program", program},
               {"api_key", settings_.api_key.empty() ? "none" : "per-boot"}});
}

void Worker::step_starting() {
    if (!child_) {
        return;
    }
    if (const auto exit = child_->poll_exit()) {
        fail(fmt::format("exited during start-up: {}", exit->describe()));
        return;
    }
    const auto now = Clock::now();
    if (now - spawned_at_ > from_seconds(settings_.config.startup_timeout)) {
        fail(fmt::format("start-up timeout: not ready after {} s",
                         settings_.config.startup_timeout));
        return;
    }
    const auto port = status().port;
    const auto health = probe_health(
        probe_target(),
        std::min(milliseconds(1000), std::chrono::duration_cast<milliseconds>(
                                         from_seconds(settings_.config.health_timeout))));
    if (!health.answered) {
        return;  // not listening yet
    }
    key_file_.reset();  // read at start-up, before the port is bound
    if (!port_verified_) {
        // Something answers on the port: make sure it is our child and not a process that
        // grabbed the port before the worker could bind it.
        if (!process_listens_on(child_->pid(), port)) {
            if (child_->poll_exit()) {
                return;  // the exit is reported on the next step, with its output
            }
            fail(fmt::format("port {} is served by another process", port));
            return;
        }
        port_verified_ = true;
    }
    const auto elapsed = to_seconds(now - spawned_at_);
    if (health.verdict == HealthVerdict::ok) {
        set_state(WorkerState::warming, fmt::format("model loaded in {:.1f} s", elapsed));
        return;
    }
    if (status().state == WorkerState::starting) {
        set_state(WorkerState::loading);
    }
    {
        std::lock_guard lock(mutex_);
        status_.detail = fmt::format("loading for {:.0f} s", elapsed);
    }
    if (now - last_progress_log_ >= kProgressLogEvery) {
        last_progress_log_ = now;
        log_.info(kComponent, "worker_loading",
                  {{"worker", settings_.id}, {"elapsed_s", static_cast<int>(elapsed)}});
    }
}

ProbeTarget Worker::probe_target() const {
    return {"127.0.0.1", status().port, settings_.api_key, {wake_.fd(), -1}};
}

bool Worker::warm_up(std::string& error, int& capacity) {
    const auto timeout =
        std::chrono::duration_cast<milliseconds>(from_seconds(settings_.config.warmup_timeout));
    if (!probe_completion(probe_target(), timeout, error)) {
        error = "warm-up failed: " + error;
        return false;
    }
    capacity = read_capacity(probe_target(), timeout, settings_.config.parallel);
    return true;
}

void Worker::step_warming() {
    std::string error;
    int capacity = 0;
    if (!warm_up(error, capacity)) {
        if (wake_.notified()) {
            return;
        }
        fail(error);
        return;
    }
    if (const auto exit = child_->poll_exit()) {
        fail(fmt::format("exited during warm-up: {}", exit->describe()));
        return;
    }
    const auto now = Clock::now();
    {
        std::lock_guard lock(mutex_);
        status_.capacity = capacity;
    }
    output_starting_ = false;
    set_state(WorkerState::ready,
              fmt::format("ready {:.2f} s after spawn", to_seconds(now - spawned_at_)));
    restart_policy_.on_ready();
    next_health_ = now + from_seconds(settings_.config.health_interval);
    last_inference_probe_ = now;
    listener_.worker_ready({settings_.id, "127.0.0.1", status().port, capacity, settings_.api_key});
    published_ = true;
}

void Worker::step_ready() {
    if (const auto exit = child_->poll_exit()) {
        fail(exit->describe());
        return;
    }
    const auto now = Clock::now();
    if (now < next_health_) {
        return;
    }
    next_health_ = now + from_seconds(settings_.config.health_interval);
    const auto health = probe_health(
        probe_target(),
        std::chrono::duration_cast<milliseconds>(from_seconds(settings_.config.health_timeout)));
    std::string error = health.error;
    bool healthy = health.healthy();
    const auto idle_interval = from_seconds(settings_.config.idle_probe_interval);
    const bool idle_probe_due = now - last_inference_probe_ >= idle_interval &&
                                listener_.worker_inflight(settings_.id) == 0;
    // /health stays green on a server whose decode loop is stuck; only a real completion
    // shows it. Once a completion probe failed, only a completion probe can clear the
    // worker: a green /health proves nothing about it.
    if (healthy && (idle_probe_due || completion_suspect_)) {
        last_inference_probe_ = now;
        const auto timeout =
            std::max<Duration>(seconds(5), from_seconds(settings_.config.health_timeout * 5));
        healthy = probe_completion(probe_target(),
                                   std::chrono::duration_cast<milliseconds>(timeout), error);
        completion_suspect_ = !healthy;
        if (!healthy) {
            error = "inference probe failed: " + error;
        }
    }
    if (wake_.notified()) {
        return;
    }
    if (healthy) {
        if (probe_failures_ > 0) {
            log_.info(kComponent, "worker_recovered",
                      {{"worker", settings_.id}, {"after_failures", probe_failures_}});
            probe_failures_ = 0;
            if (!published_) {
                listener_.worker_ready({settings_.id, "127.0.0.1", status().port, status().capacity,
                                        settings_.api_key});
                published_ = true;
            }
        }
        return;
    }
    ++probe_failures_;
    log_.warn(kComponent, "probe_failed",
              {{"worker", settings_.id},
               {"failures", probe_failures_},
               {"limit", settings_.config.health_failures},
               {"error", error}});
    // Out of rotation at the first failure; replaced only after several in a row, so one
    // slow probe does not cost a model reload.
    if (published_) {
        listener_.worker_unavailable(settings_.id);
        published_ = false;
    }
    if (probe_failures_ >= settings_.config.health_failures) {
        fail(fmt::format("unresponsive: {} failed probes in a row (last: {})", probe_failures_,
                         error));
    }
}

void Worker::step_backoff() {
    if (Clock::now() >= backoff_until_) {
        {
            std::lock_guard lock(mutex_);
            ++status_.restarts;
        }
        set_state(WorkerState::starting, "restart");
        spawn();
    }
}

void Worker::fail(const std::string& reason) {
    if (published_) {
        listener_.worker_unavailable(settings_.id);
        published_ = false;
    }
    std::optional<ExitInfo> exit;
    if (child_) {
        exit = child_->terminate(from_seconds(settings_.config.stop_grace));
    }
    // Let the reader thread deliver the last lines before we quote them.
    child_.reset();
    key_file_.reset();
    const auto last_lines = tail_output(8);
    const auto decision = restart_policy_.on_failure(Clock::now(), random_);
    {
        std::lock_guard lock(mutex_);
        status_.last_exit_reason = reason;
        status_.last_output = last_lines;
        ++status_.failures_by_reason[failure_kind(reason)];
        status_.pid = 0;
        status_.capacity = 0;
    }
    log_.warn(kComponent, "worker_failed",
              {{"worker", settings_.id},
               {"reason", reason},
               {"exit", exit ? exit->describe() : "not started"},
               {"last_output", last_lines}});
    if (decision.give_up) {
        log_.error(kComponent, "worker_gave_up",
                   {{"worker", settings_.id}, {"reason", decision.reason}, {"last", reason}});
        set_state(WorkerState::backoff);
        set_state(WorkerState::failed, decision.reason);
        return;
    }
    backoff_until_ = Clock::now() + decision.delay;
    set_state(WorkerState::backoff,
              fmt::format("restart in {:.2f} s after: {}", to_seconds(decision.delay), reason));
}

void Worker::drain_and_stop() {
    if (published_) {
        listener_.worker_unavailable(settings_.id);
        published_ = false;
    }
    set_state(WorkerState::draining);
    Duration grace;
    {
        std::lock_guard lock(mutex_);
        grace = drain_grace_;
    }
    const auto deadline = Clock::now() + grace;
    while (child_ && listener_.worker_inflight(settings_.id) > 0 && Clock::now() < deadline) {
        std::unique_lock lock(mutex_);
        cv_.wait_for(lock, milliseconds(20), [&] { return drain_grace_ == Duration::zero(); });
        if (drain_grace_ == Duration::zero()) {
            break;
        }
    }
    if (child_) {
        const auto exit = child_->terminate(from_seconds(settings_.config.stop_grace));
        log_.info(kComponent, "worker_stopped",
                  {{"worker", settings_.id}, {"pid", child_->pid()}, {"exit", exit.describe()}});
        child_.reset();
    }
    key_file_.reset();
    {
        std::lock_guard lock(mutex_);
        status_.pid = 0;
    }
    set_state(WorkerState::stopped);
}

}  // namespace llama_pool
