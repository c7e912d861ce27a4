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
// A starting worker's port gives no event when it opens: it is probed this often.
constexpr auto kStartingProbeEvery = milliseconds(50);
constexpr auto kProgressLogEvery = seconds(5);

const TimeSource& steady_time() {
    static const SteadyTimeSource time;
    return time;
}

}  // namespace

WorkerStatus with_lifecycle(WorkerStatus base, const Lifecycle::Snapshot& life) {
    base.state = life.state;
    base.since = life.since;
    base.detail = life.detail;
    base.last_exit_reason = life.last_failure;
    base.last_output = life.last_output;
    base.failures_by_reason = life.failures;
    return base;
}

Worker::Worker(WorkerSettings settings, Logger& log, WorkerListener& listener, RandomSource& random)
    : settings_(std::move(settings)),
      log_(log),
      listener_(listener),
      random_(random),
      time_(settings_.time != nullptr ? *settings_.time : steady_time()),
      restart_policy_(from_seconds(settings_.config.restart_backoff_base),
                      from_seconds(settings_.config.restart_backoff_cap),
                      settings_.config.crash_loop_restarts,
                      from_seconds(settings_.config.crash_loop_window)),
      stall_(from_seconds(settings_.config.stall_timeout)),
      lifecycle_(log, kComponent, "worker_state", "worker_failed", {{"worker", settings_.id}}) {
    status_.id = settings_.id;
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
        hurried_ = true;
        wake_.notify();                 // abort blocking probes at once
        listener_.wake_idle_waiters();  // and a drain (lock order: none held here)
    }
    cv_.notify_all();
}

void Worker::join() {
    if (thread_.joinable()) {
        thread_.join();
    }
}

WorkerStatus Worker::status() const {
    WorkerStatus base;
    {
        std::lock_guard lock(mutex_);
        base = status_;
    }
    return with_lifecycle(std::move(base), lifecycle_.snapshot());
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

std::optional<TimePoint> Worker::next_wake() const {
    if (child_closing_ && child_) {
        return time_.now() + kStartingProbeEvery;
    }
    switch (lifecycle_.state()) {
        case WorkerState::starting:
        case WorkerState::loading:
            return time_.now() + kStartingProbeEvery;
        case WorkerState::warming:
            return time_.now();  // the warm-up runs at once
        case WorkerState::ready:
            return next_health_;
        case WorkerState::backoff:
            return backoff_until_;
        case WorkerState::failed:
        case WorkerState::draining:
        case WorkerState::stopped:
            break;
    }
    return std::nullopt;  // only a request moves it on
}

void Worker::wait_for_event(std::optional<TimePoint> until) {
    std::unique_lock lock(mutex_);
    const auto woken = [this] { return stop_requested_ || restart_requested_ || child_event_; };
    if (!until) {
        cv_.wait(lock, woken);
    } else if (const auto left = *until - time_.now(); left > Duration::zero()) {
        cv_.wait_for(lock, left, woken);
    }
    // Consumed: the steps that follow look at the child until it is reaped.
    child_closing_ = std::exchange(child_event_, false) || child_closing_;
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
        const auto state = lifecycle_.state();
        if (restart) {
            restart_policy_.reset();
            if (state == WorkerState::failed || state == WorkerState::backoff) {
                backoff_until_ = time_.now();
                lifecycle_.transition(WorkerState::starting, "admin restart");
                spawn();
            } else {
                fail(FailureKind::admin, "admin restart");
                backoff_until_ = time_.now();
            }
            continue;
        }
        switch (state) {
            case WorkerState::starting:
            case WorkerState::loading:
                step_starting();
                break;
            case WorkerState::warming:
                step_warming();
                break;
            case WorkerState::ready:
                step_ready();
                break;
            case WorkerState::backoff:
                step_backoff();
                break;
            case WorkerState::failed:
            case WorkerState::draining:
            case WorkerState::stopped:
                break;
        }
        wait_for_event(next_wake());
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
    stall_.reset();
    completion_suspect_ = false;
    port_verified_ = false;
    {
        std::lock_guard lock(mutex_);
        child_event_ = false;  // an event of the last child is no news about this one
    }
    child_closing_ = false;
    try {
        child_ = std::make_unique<ChildProcess>(
            program, args, [this](std::string_view line) { on_output(line); },
            [this] {
                {
                    std::lock_guard lock(mutex_);
                    child_event_ = true;
                }
                cv_.notify_all();
            });
    } catch (const std::exception& e) {
        {
            std::lock_guard lock(mutex_);
            status_.port = port;
            status_.pid = 0;
        }
        fail(FailureKind::startup_exit, e.what());
        return;
    }
    spawned_at_ = time_.now();
    last_progress_log_ = spawned_at_;
    {
        std::lock_guard lock(mutex_);
        status_.pid = child_->pid();
        status_.port = port;
    }
    capacity_ = 0;
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
        fail(FailureKind::startup_exit,
             fmt::format("exited during start-up: {}", exit->describe()));
        return;
    }
    const auto now = time_.now();
    if (now - spawned_at_ > from_seconds(settings_.config.startup_timeout)) {
        fail(FailureKind::startup_timeout, fmt::format("start-up timeout: not ready after {} s",
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
            fail(FailureKind::port_conflict,
                 fmt::format("port {} is served by another process", port));
            return;
        }
        port_verified_ = true;
    }
    const auto elapsed = to_seconds(now - spawned_at_);
    if (health.verdict == HealthVerdict::ok) {
        lifecycle_.transition(WorkerState::warming,
                              fmt::format("model loaded in {:.1f} s", elapsed));
        return;
    }
    lifecycle_.transition(WorkerState::loading, fmt::format("loading for {:.0f} s", elapsed));
    if (now - last_progress_log_ >= kProgressLogEvery) {
        last_progress_log_ = now;
        log_.info(kComponent, "worker_loading",
                  {{"worker", settings_.id}, {"elapsed_s", static_cast<int>(elapsed)}});
    }
}

ProbeTarget Worker::probe_target() const {
    return {"127.0.0.1",
            status().port,
            settings_.api_key,
            {wake_.fd(), -1},
            embeddings_only(settings_.config)};
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
        fail(FailureKind::warmup_failed, error);
        return;
    }
    if (const auto exit = child_->poll_exit()) {
        fail(FailureKind::warmup_failed,
             fmt::format("exited during warm-up: {}", exit->describe()));
        return;
    }
    const auto now = time_.now();
    capacity_ = capacity;
    output_starting_ = false;
    lifecycle_.transition(WorkerState::ready,
                          fmt::format("ready {:.2f} s after spawn", to_seconds(now - spawned_at_)));
    restart_policy_.on_ready();
    next_health_ = now + from_seconds(settings_.config.health_interval);
    last_inference_probe_ = now;
    listener_.worker_ready({settings_.id, "127.0.0.1", status().port, capacity, settings_.api_key});
    published_ = true;
}

void Worker::step_ready() {
    if (const auto exit = child_->poll_exit()) {
        fail(FailureKind::crashed, exit->describe());
        return;
    }
    const auto now = time_.now();
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
    if (healthy && stalled(now)) {
        return;
    }
    if (healthy) {
        if (probe_failures_ > 0) {
            log_.info(kComponent, "worker_recovered",
                      {{"worker", settings_.id}, {"after_failures", probe_failures_}});
            probe_failures_ = 0;
            if (!published_) {
                listener_.worker_ready(
                    {settings_.id, "127.0.0.1", status().port, capacity_, settings_.api_key});
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
        fail(FailureKind::unresponsive,
             fmt::format("unresponsive: {} failed probes in a row (last: {})", probe_failures_,
                         error));
    }
}

bool Worker::stalled(TimePoint now) {
    const int inflight = listener_.worker_inflight(settings_.id);
    std::optional<WorkerProgress> metrics;
    if (inflight > 0) {
        metrics = read_decode_progress(probe_target(),
                                       std::chrono::duration_cast<milliseconds>(
                                           from_seconds(settings_.config.health_timeout)));
    }
    if (stall_.look(now, inflight, listener_.worker_progress(settings_.id), metrics) !=
        StallVerdict::stalled) {
        return false;
    }
    const auto quiet = to_seconds(stall_.quiet_for(now));
    log_.warn(kComponent, "worker_stalled",
              {{"worker", settings_.id},
               {"inflight", inflight},
               {"quiet_s", quiet},
               {"stall_timeout_s", settings_.config.stall_timeout}});
    // fail() stops the process (SIGTERM, then SIGKILL after stop_grace: a stuck server may
    // ignore SIGTERM). Its connections close with it, so requests that got nothing yet are
    // retried elsewhere and streams end with the relay's error event.
    fail(FailureKind::stalled,
         fmt::format("stalled: no progress for {:.0f} s with {} requests in flight", quiet,
                     inflight));
    return true;
}

void Worker::step_backoff() {
    if (time_.now() >= backoff_until_) {
        {
            std::lock_guard lock(mutex_);
            ++status_.restarts;
        }
        lifecycle_.transition(WorkerState::starting, "restart");
        spawn();
    }
}

void Worker::fail(FailureKind kind, const std::string& reason) {
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
    const auto decision = restart_policy_.on_failure(time_.now(), random_);
    {
        std::lock_guard lock(mutex_);
        status_.pid = 0;
        child_event_ = false;  // that child is gone; its exit is handled here
    }
    child_closing_ = false;
    capacity_ = 0;
    const nlohmann::json exit_field = {{"exit", exit ? exit->describe() : "not started"}};
    if (decision.give_up) {
        lifecycle_.fail(kind, reason, last_lines, WorkerState::backoff, reason, exit_field);
        log_.error(kComponent, "worker_gave_up",
                   {{"worker", settings_.id}, {"reason", decision.reason}, {"last", reason}});
        lifecycle_.transition(WorkerState::failed, decision.reason);
        return;
    }
    backoff_until_ = time_.now() + decision.delay;
    lifecycle_.fail(
        kind, reason, last_lines, WorkerState::backoff,
        fmt::format("restart in {:.2f} s after: {}", to_seconds(decision.delay), reason),
        exit_field);
}

void Worker::drain_and_stop() {
    if (published_) {
        listener_.worker_unavailable(settings_.id);
        published_ = false;
    }
    lifecycle_.transition(WorkerState::draining);
    Duration grace;
    {
        std::lock_guard lock(mutex_);
        grace = drain_grace_;
    }
    // The registry wakes this wait when the worker's last request ends, and hurry() (a zero
    // drain grace) at once.
    if (child_ && !hurried_) {
        listener_.wait_idle(settings_.id, grace, hurried_);
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
    lifecycle_.transition(WorkerState::stopped);
}

}  // namespace llama_pool
