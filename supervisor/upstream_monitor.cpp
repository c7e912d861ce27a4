#include "supervisor/upstream_monitor.hpp"

#include <fmt/format.h>

namespace llama_pool {

namespace {
constexpr const char* kComponent = "supervisor";

const TimeSource& steady_time() {
    static const SteadyTimeSource time;
    return time;
}

std::string address_of(const UpstreamAddress& a) {
    return fmt::format("{}:{}", a.host, a.port);
}
}  // namespace

UpstreamMonitor::UpstreamMonitor(std::string id, UpstreamAddress address, PoolConfig config,
                                 Logger& log, WorkerListener& listener, const TimeSource* time)
    : id_(std::move(id)),
      address_(std::move(address)),
      config_(std::move(config)),
      log_(log),
      listener_(listener),
      time_(time != nullptr ? *time : steady_time()),
      lifecycle_(log, kComponent, "upstream_state", "upstream_failed",
                 {{"worker", id_}, {"address", address_of(address_)}}),
      stall_(from_seconds(config_.stall_timeout)) {
    status_.id = id_;
    status_.port = address_.port;
    status_.managed = false;
}

UpstreamMonitor::~UpstreamMonitor() {
    request_stop();
    join();
}

void UpstreamMonitor::start() {
    thread_ = std::thread([this] { run(); });
}

void UpstreamMonitor::request_stop() {
    {
        std::lock_guard lock(mutex_);
        stop_requested_ = true;
    }
    wake_.notify();
    cv_.notify_all();
}

void UpstreamMonitor::join() {
    if (thread_.joinable()) {
        thread_.join();
    }
}

WorkerStatus UpstreamMonitor::status() const {
    WorkerStatus base;
    {
        std::lock_guard lock(mutex_);
        base = status_;
    }
    auto out = with_lifecycle(std::move(base), lifecycle_.snapshot());
    if (out.detail.empty()) {
        out.detail = "upstream " + address_of(address_);  // where it is, when nothing else
    }
    return out;
}

ProbeTarget UpstreamMonitor::target() const {
    return {address_.host, address_.port, config_.upstream_api_key, {wake_.fd(), -1}};
}

void UpstreamMonitor::fail(FailureKind kind, const std::string& reason) {
    if (published_) {
        listener_.worker_unavailable(id_);
        published_ = false;
    }
    capacity_ = 0;
    {
        std::lock_guard lock(mutex_);
        ++status_.restarts;
    }
    lifecycle_.fail(kind, reason, {}, WorkerState::backoff, reason);
}

void UpstreamMonitor::run() {
    while (true) {
        {
            std::unique_lock lock(mutex_);
            if (stop_requested_) {
                break;
            }
        }
        step();
        std::unique_lock lock(mutex_);
        if (const auto left = next_probe_ - time_.now(); left > Duration::zero()) {
            cv_.wait_for(lock, left, [this] { return stop_requested_; });
        }
    }
    if (published_) {
        listener_.worker_unavailable(id_);
    }
    lifecycle_.transition(WorkerState::draining);
    lifecycle_.transition(WorkerState::stopped);
}

bool UpstreamMonitor::stalled(TimePoint now, milliseconds timeout) {
    const int inflight = listener_.worker_inflight(id_);
    std::optional<WorkerProgress> metrics;
    if (inflight > 0) {
        metrics = read_decode_progress(target(), timeout);
    }
    if (stall_.look(now, inflight, listener_.worker_progress(id_), metrics) !=
        StallVerdict::stalled) {
        return false;
    }
    const auto quiet = to_seconds(stall_.quiet_for(now));
    log_.warn(kComponent, "upstream_stalled",
              {{"worker", id_}, {"inflight", inflight}, {"quiet_s", quiet}});
    // Out of rotation; back only after a completion probe passes (warm-up). The pool cannot
    // stop a server it does not run: requests already on it end by their own timeouts.
    fail(FailureKind::stalled,
         fmt::format("stalled: no progress for {:.0f} s with {} requests in flight", quiet,
                     inflight));
    return true;
}

void UpstreamMonitor::step() {
    const auto now = time_.now();
    if (now < next_probe_) {
        return;
    }
    next_probe_ = now + from_seconds(config_.health_interval);
    const auto timeout =
        std::chrono::duration_cast<milliseconds>(from_seconds(config_.health_timeout));
    const auto health = probe_health(target(), timeout);
    if (wake_.notified()) {
        return;
    }
    const auto state = lifecycle_.state();
    if (state != WorkerState::ready) {
        if (state == WorkerState::backoff) {
            lifecycle_.transition(WorkerState::starting, "probing again");
        }
        if (!health.answered) {
            return;
        }
        if (health.verdict == HealthVerdict::loading) {
            lifecycle_.transition(WorkerState::loading);
            return;
        }
        if (!health.healthy()) {
            return;
        }
        lifecycle_.transition(WorkerState::warming);
        std::string error;
        const auto warm_timeout =
            std::chrono::duration_cast<milliseconds>(from_seconds(config_.warmup_timeout));
        if (!probe_completion(target(), warm_timeout, error)) {
            if (!wake_.notified()) {
                fail(FailureKind::warmup_failed, "warm-up failed: " + error);
            }
            return;
        }
        const int capacity = read_capacity(target(), warm_timeout, config_.parallel);
        capacity_ = capacity;
        failures_ = 0;
        completion_suspect_ = false;
        stall_.reset();
        last_completion_probe_ = now;
        lifecycle_.transition(WorkerState::ready,
                              fmt::format("upstream {}, {} slots", address_of(address_), capacity));
        listener_.worker_ready({id_, address_.host, address_.port, capacity,
                                config_.upstream_api_key, address_.weight});
        published_ = true;
        return;
    }
    std::string error = health.error;
    bool healthy = health.healthy();
    // As for managed workers: once a completion probe failed, only a completion probe can
    // clear the upstream, whatever /health says.
    const bool completion_due =
        now - last_completion_probe_ >= from_seconds(config_.idle_probe_interval) &&
        listener_.worker_inflight(id_) == 0;
    if (healthy && (completion_due || completion_suspect_)) {
        last_completion_probe_ = now;
        healthy = probe_completion(target(), std::max(milliseconds(5000), timeout * 5), error);
        completion_suspect_ = !healthy;
    }
    if (wake_.notified()) {
        return;
    }
    if (healthy && stalled(now, timeout)) {
        return;
    }
    if (healthy) {
        if (failures_ > 0 && !published_) {
            listener_.worker_ready({id_, address_.host, address_.port, capacity_,
                                    config_.upstream_api_key, address_.weight});
            published_ = true;
        }
        failures_ = 0;
        return;
    }
    ++failures_;
    if (published_) {
        listener_.worker_unavailable(id_);
        published_ = false;
    }
    if (failures_ >= config_.health_failures) {
        failures_ = 0;
        fail(FailureKind::unresponsive,
             fmt::format("unresponsive: {} failed probes in a row (last: {})",
                         config_.health_failures, error));
    }
}

}  // namespace llama_pool
