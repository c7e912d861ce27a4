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
inline constexpr WorkerState all_worker_states[] = {
    WorkerState::starting, WorkerState::loading, WorkerState::warming, WorkerState::ready,
    WorkerState::draining, WorkerState::stopped, WorkerState::backoff, WorkerState::failed};

}  // namespace llama_pool
