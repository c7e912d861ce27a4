#include "supervisor/group_scaling.hpp"

#include <algorithm>

namespace llama_pool {

std::string_view to_string(ScaleReason reason) {
    switch (reason) {
        case ScaleReason::below_minimum:
            return "below_minimum";
        case ScaleReason::demand:
            return "demand";
        case ScaleReason::idle:
            return "idle";
        case ScaleReason::evicted:
            return "evicted";
    }
    return "unknown";
}

namespace {

bool idle(const GroupLoad& g) {
    return g.inflight == 0 && g.waiting == 0;
}

// Workers the group should have now, ignoring the budget.
int wanted(const GroupLoad& g) {
    int want = g.min_workers;
    if (g.waiting > 0) {
        const int per = std::max(1, g.slots_per_worker);
        want = std::max(want, (g.inflight + g.waiting + per - 1) / per);
    }
    return std::clamp(want, 0, std::max(0, g.max_workers));
}

}  // namespace

ScalePlan plan_scaling(const std::vector<GroupLoad>& groups, int max_total, TimePoint now) {
    ScalePlan plan;
    int total = 0;
    for (const auto& g : groups) {
        total += g.workers;
    }
    int free = max_total > 0 ? std::max(0, max_total - total) : 1 << 30;
    // Workers each group still has after this plan's stops.
    std::vector<int> left;
    for (const auto& g : groups) {
        left.push_back(g.workers);
    }
    std::vector<ScaleAction> starts;
    for (std::size_t i = 0; i < groups.size(); ++i) {
        const auto& g = groups[i];
        int need = wanted(g) - g.workers;
        const auto reason =
            g.workers < g.min_workers ? ScaleReason::below_minimum : ScaleReason::demand;
        while (need > 0 && free > 0) {
            starts.push_back({ScaleAction::Kind::start, i, reason});
            --need;
            --free;
        }
        while (need > 0) {
            // The budget is full: the least recently active idle group above its minimum
            // gives up a worker.
            std::optional<std::size_t> victim;
            for (std::size_t j = 0; j < groups.size(); ++j) {
                const auto& v = groups[j];
                if (j == i || !idle(v) || left[j] <= v.min_workers) {
                    continue;
                }
                if (!victim || v.last_active < groups[*victim].last_active) {
                    victim = j;
                }
            }
            if (!victim) {
                plan.budget_blocked = true;
                break;
            }
            --left[*victim];
            plan.actions.push_back({ScaleAction::Kind::stop, *victim, ScaleReason::evicted});
            starts.push_back({ScaleAction::Kind::start, i, reason});
            --need;
        }
    }
    for (std::size_t i = 0; i < groups.size(); ++i) {
        const auto& g = groups[i];
        if (g.idle_stop <= 0 || !idle(g) || left[i] <= g.min_workers) {
            continue;
        }
        const auto due = std::max(g.last_active, g.last_scaled) + from_seconds(g.idle_stop);
        if (now >= due) {
            --left[i];
            plan.actions.push_back({ScaleAction::Kind::stop, i, ScaleReason::idle});
            // The next worker stops one idle_stop after this one.
            if (left[i] > g.min_workers) {
                plan.next_check = std::min(plan.next_check.value_or(TimePoint::max()),
                                           now + from_seconds(g.idle_stop));
            }
        } else {
            plan.next_check = std::min(plan.next_check.value_or(TimePoint::max()), due);
        }
    }
    plan.actions.insert(plan.actions.end(), starts.begin(), starts.end());
    return plan;
}

ScalerInterest scaler_interest(const GroupLoad& group, bool budget_blocked) {
    ScalerInterest interest;
    interest.demand = group.workers < group.max_workers;
    interest.idle = budget_blocked ||
                    (group.idle_stop > 0 && !idle(group) && group.workers > group.min_workers);
    return interest;
}

}  // namespace llama_pool
