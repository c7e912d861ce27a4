#pragma once

#include <string_view>

namespace llama_pool {

// The life of one worker process.
//
//   starting -> loading -> warming -> ready -> draining -> stopped
//   any of starting, loading, warming, ready -> backoff (exit, timeout, failed probes)
//   backoff -> starting (restart after the delay) or failed (crash loop)
//   failed -> starting (admin restart only)
//
// starting: spawned, port not answering yet. loading: answers 503 while the model loads.
// warming: /health ok, the one-token warm-up completion is running. ready: takes traffic.
// draining: no new traffic, in-flight requests finish. backoff: waiting to restart after a
// failure. failed: gave up after a crash loop; only an admin restart revives it.
enum class WorkerState { starting, loading, warming, ready, draining, stopped, backoff, failed };

std::string_view to_string(WorkerState state);
// The transition table; every state change is checked against it.
bool transition_allowed(WorkerState from, WorkerState to);

// Why a worker (or a watched upstream) left service: a bounded set, the metric label of
// llama_pool_worker_restarts_total. The message that goes with a failure (exit code, last
// probe error) is free text for people and never decides the kind.
enum class FailureKind {
    crashed,          // exited or was killed while ready
    startup_exit,     // exited during start-up, or could not be started at all
    startup_timeout,  // not ready within startup_timeout
    warmup_failed,    // the warm-up completion failed, or it exited during warm-up
    unresponsive,     // health_failures failed probes in a row
    port_conflict,    // another process serves the port it was given
    admin,            // restarted by an admin request
    stalled,          // requests in flight and no progress for stall_timeout
};
std::string_view to_string(FailureKind kind);
inline constexpr FailureKind all_failure_kinds[] = {
    FailureKind::crashed,       FailureKind::startup_exit, FailureKind::startup_timeout,
    FailureKind::warmup_failed, FailureKind::unresponsive, FailureKind::port_conflict,
    FailureKind::admin,         FailureKind::stalled};

inline constexpr WorkerState all_worker_states[] = {
    WorkerState::starting, WorkerState::loading, WorkerState::warming, WorkerState::ready,
    WorkerState::draining, WorkerState::stopped, WorkerState::backoff, WorkerState::failed};

}  // namespace llama_pool
