#include "supervisor/lifecycle.hpp"

#include <fmt/format.h>

namespace llama_pool {

IllegalTransition::IllegalTransition(const std::string& id, WorkerState from_state,
                                     WorkerState to_state)
    : std::logic_error(fmt::format("{}: illegal transition {} -> {}", id, to_string(from_state),
                                   to_string(to_state))),
      from(from_state),
      to(to_state) {}

Lifecycle::Lifecycle(Logger& log, std::string component, std::string state_event,
                     std::string failed_event, nlohmann::json fields)
    : log_(log),
      component_(std::move(component)),
      state_event_(std::move(state_event)),
      failed_event_(std::move(failed_event)),
      fields_(std::move(fields)) {
    snapshot_.since = std::chrono::system_clock::now();
}

void Lifecycle::observe(Observer observer) {
    observers_.push_back(std::move(observer));
}

WorkerState Lifecycle::state() const {
    std::lock_guard lock(mutex_);
    return snapshot_.state;
}

Lifecycle::Snapshot Lifecycle::snapshot() const {
    std::lock_guard lock(mutex_);
    return snapshot_;
}

void Lifecycle::set_detail(std::string detail) {
    std::lock_guard lock(mutex_);
    snapshot_.detail = std::move(detail);
}

void Lifecycle::transition(WorkerState next, std::string detail) {
    WorkerState previous;
    {
        std::lock_guard lock(mutex_);
        previous = snapshot_.state;
        if (previous != next && !transition_allowed(previous, next)) {
            auto fields = fields_;
            fields["from"] = to_string(previous);
            fields["to"] = to_string(next);
            log_.error(component_, "illegal_transition", fields);
            throw IllegalTransition(fields_.value("worker", std::string()), previous, next);
        }
        snapshot_.detail = detail;
        if (previous == next) {
            return;
        }
        snapshot_.state = next;
        snapshot_.since = std::chrono::system_clock::now();
    }
    auto fields = fields_;
    fields["from"] = to_string(previous);
    fields["to"] = to_string(next);
    if (!detail.empty()) {
        fields["detail"] = detail;
    }
    log_.info(component_, state_event_, fields);
    const Change change{previous, next, std::move(detail)};
    for (const auto& observer : observers_) {
        observer(change);
    }
}

void Lifecycle::fail(FailureKind kind, const std::string& message,
                     std::vector<std::string> last_output, WorkerState next, std::string detail,
                     nlohmann::json log_fields) {
    {
        std::lock_guard lock(mutex_);
        snapshot_.last_failure = message;
        snapshot_.last_output = last_output;
        ++snapshot_.failures[kind];
    }
    auto fields = fields_;
    fields["kind"] = to_string(kind);
    fields["reason"] = message;
    if (log_fields.is_object()) {
        for (const auto& [k, v] : log_fields.items()) {
            fields[k] = v;
        }
    }
    if (!last_output.empty()) {
        fields["last_output"] = std::move(last_output);
    }
    log_.warn(component_, failed_event_, fields);
    transition(next, std::move(detail));
}

}  // namespace llama_pool
