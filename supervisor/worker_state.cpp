#include "supervisor/worker_state.hpp"

namespace llama_pool {

std::string_view to_string(WorkerState state) {
    switch (state) {
        case WorkerState::starting:
            return "starting";
        case WorkerState::loading:
            return "loading";
        case WorkerState::warming:
            return "warming";
        case WorkerState::ready:
            return "ready";
        case WorkerState::draining:
            return "draining";
        case WorkerState::stopped:
            return "stopped";
        case WorkerState::backoff:
            return "backoff";
        case WorkerState::failed:
            return "failed";
    }
    return "unknown";
}

std::string_view to_string(FailureKind kind) {
    switch (kind) {
        case FailureKind::crashed:
            return "crashed";
        case FailureKind::startup_exit:
            return "startup_exit";
        case FailureKind::startup_timeout:
            return "startup_timeout";
        case FailureKind::warmup_failed:
            return "warmup_failed";
        case FailureKind::unresponsive:
            return "unresponsive";
        case FailureKind::port_conflict:
            return "port_conflict";
        case FailureKind::admin:
            return "admin";
        case FailureKind::stalled:
            return "stalled";
    }
    return "unknown";
}

bool transition_allowed(WorkerState from, WorkerState to) {
    using S = WorkerState;
    switch (from) {
        case S::starting:
            return to == S::loading || to == S::warming || to == S::backoff || to == S::draining;
        case S::loading:
            return to == S::warming || to == S::backoff || to == S::draining;
        case S::warming:
            return to == S::ready || to == S::backoff || to == S::draining;
        case S::ready:
            return to == S::draining || to == S::backoff;
        case S::draining:
            return to == S::stopped;
        case S::stopped:
            return to == S::starting;
        case S::backoff:
            return to == S::starting || to == S::failed || to == S::draining;
        case S::failed:
            return to == S::starting || to == S::draining;
    }
    return false;
}

}  // namespace llama_pool
