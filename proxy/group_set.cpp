#include "proxy/group_set.hpp"

#include <algorithm>
#include <thread>

namespace llama_pool {

namespace {

// Looked at again this long after a plan that could not be carried out (a rollout held the
// group, or the budget was full with nobody idle): the only case without an event to wait
// for, since a rollout ending or a busy group emptying may not queue a request.
constexpr auto kRetryBlocked = milliseconds(500);

std::vector<GroupConfig> specs_of(const std::vector<ResolvedGroup>& groups) {
    std::vector<GroupConfig> out;
    for (const auto& g : groups) {
        out.push_back(g.spec);
    }
    return out;
}

}  // namespace

GroupSet::GroupSet(const PoolConfig& config, Logger& log, RandomSource& random,
                   const TimeSource& time, PoolMetrics& metrics)
    : config_(config), log_(log), time_(time), budget_(config.max_total_workers) {
    const auto resolved = resolve_groups(config, std::thread::hardware_concurrency());
    for (const auto& g : resolved) {
        groups_.push_back(std::make_unique<ModelGroup>(g, log, random, time, metrics, &budget_));
        runtime_.push_back(std::make_unique<Runtime>());
        groups_.back()->registry().set_activity_hook([this, rt = runtime_.back().get()](
                                                         BackendRegistry::Activity activity) {
            const auto& wants =
                activity == BackendRegistry::Activity::waiting ? rt->wants_demand : rt->wants_idle;
            if (wants.load()) {
                poke();
            }
        });
        if (g.spec.is_default && default_ == 0) {
            default_ = groups_.size() - 1;
        }
    }
    router_ = std::make_unique<GroupRouter>(specs_of(resolved));
}

GroupSet::~GroupSet() {
    stop(Duration::zero());
}

void GroupSet::start() {
    if (!implicit()) {
        for (const auto& g : groups_) {
            log_.info("pool", "group",
                      {{"group", g->name()},
                       {"model", g->spec().model},
                       {"workers", g->spec().workers},
                       {"min_workers", g->spec().min_workers},
                       {"idle_stop_s", g->spec().idle_stop},
                       {"default", g->spec().is_default}});
        }
    }
    for (auto& g : groups_) {
        g->supervisor().start();
    }
    scaler_ = std::thread([this] { run_scaler(); });
}

void GroupSet::stop(Duration drain_grace) {
    {
        std::lock_guard lock(mutex_);
        stopping_ = true;
    }
    cv_.notify_all();
    if (scaler_.joinable()) {
        scaler_.join();
    }
    // Every group drains at once: a slow one must not hold the others' shutdown up.
    std::vector<std::thread> stoppers;
    for (auto& g : groups_) {
        stoppers.emplace_back([&g, drain_grace] { g->supervisor().stop(drain_grace); });
    }
    for (auto& t : stoppers) {
        t.join();
    }
}

void GroupSet::hurry() {
    for (auto& g : groups_) {
        g->supervisor().hurry();
    }
}

void GroupSet::shutdown_registries() {
    for (auto& g : groups_) {
        g->registry().shutdown();
    }
}

ModelGroup& GroupSet::route(const HttpRequest& request, std::string_view path, GroupMatch* match) {
    if (groups_.size() == 1) {
        if (match != nullptr) {
            *match = GroupMatch::default_group;
        }
        return *groups_.front();
    }
    const auto choice = router_->route(requested_model(request.body, request.query()), path);
    if (match != nullptr) {
        *match = choice.match;
    }
    return *groups_[choice.group];
}

ModelGroup& GroupSet::route_model(std::string_view model, std::string_view path) {
    return *groups_[router_->route(model, path).group];
}

ModelGroup* GroupSet::find(std::string_view name) {
    const auto i = router_->find(name);
    return i ? groups_[*i].get() : nullptr;
}

void GroupSet::poke() {
    std::lock_guard lock(mutex_);
    poked_ = true;
    cv_.notify_all();
}

GroupSet::AdminResult GroupSet::start_group(std::string_view name) {
    return hold(name, true);
}

GroupSet::AdminResult GroupSet::stop_group(std::string_view name) {
    return hold(name, false);
}

GroupSet::AdminResult GroupSet::hold(std::string_view name, bool up) {
    const auto i = router_->find(name);
    if (!i) {
        return AdminResult::not_found;
    }
    {
        std::lock_guard lock(mutex_);
        if (stopping_) {
            return AdminResult::stopping;
        }
        // Up: kept at its workers. Down: its workers stop now, and it starts on demand.
        runtime_[*i]->min_override = up ? groups_[*i]->spec().workers : 0;
        runtime_[*i]->stop_requested = !up;
    }
    log_.info("pool", up ? "group_start_requested" : "group_stop_requested",
              {{"group", groups_[*i]->name()}});
    poke();
    return AdminResult::accepted;
}

std::string GroupSet::admin_hold(const ModelGroup& group) const {
    for (std::size_t i = 0; i < groups_.size(); ++i) {
        if (groups_[i].get() == &group) {
            const int hold = runtime_[i]->min_override;
            return hold < 0 ? "" : hold == 0 ? "stopped" : "started";
        }
    }
    return "";
}

std::vector<GroupLoad> GroupSet::collect_loads() {
    std::vector<GroupLoad> loads;
    for (std::size_t i = 0; i < groups_.size(); ++i) {
        auto& g = *groups_[i];
        const auto& rt = *runtime_[i];
        GroupLoad load;
        load.workers = g.supervisor().worker_count();
        // Bounds and slots from the settings the group runs now: a reload may have changed
        // workers or parallel since the group was built.
        const auto live = g.supervisor().config();
        const int workers = live.workers;
        const bool always_on = g.spec().min_workers >= g.spec().workers;
        load.min_workers = rt.min_override >= 0 ? rt.min_override.load()
                           : always_on          ? workers
                                                : std::min(g.spec().min_workers, workers);
        load.max_workers = workers;
        load.slots_per_worker = live.parallel;
        load.inflight = g.registry().inflight_total();
        load.waiting = static_cast<int>(g.registry().waiting());
        load.idle_stop = g.spec().idle_stop;
        load.last_active = g.registry().last_active();
        load.last_scaled = rt.last_scaled;
        loads.push_back(load);
    }
    return loads;
}

bool GroupSet::act(const ScaleAction& action) {
    auto& g = *groups_[action.group];
    const bool done = action.kind == ScaleAction::Kind::start
                          ? g.supervisor().add_worker()
                          : g.supervisor().retire_one(from_seconds(config_.shutdown_grace));
    if (done) {
        runtime_[action.group]->last_scaled = time_.now();
        log_.info("pool",
                  action.kind == ScaleAction::Kind::start ? "group_scaled_up" : "group_scaled_down",
                  {{"group", g.name()},
                   {"reason", to_string(action.reason)},
                   {"workers", g.supervisor().worker_count()},
                   {"budget_in_use", budget_.in_use()},
                   {"budget", budget_.limit()}});
    }
    return done;
}

void GroupSet::stop_requested_groups() {
    for (std::size_t i = 0; i < groups_.size(); ++i) {
        if (!runtime_[i]->stop_requested.exchange(false)) {
            continue;
        }
        auto& g = *groups_[i];
        const auto grace = from_seconds(config_.shutdown_grace);
        while (g.supervisor().retire_one(grace)) {
        }
        runtime_[i]->last_scaled = time_.now();
        log_.info("pool", "group_stopped", {{"group", g.name()}});
    }
}

void GroupSet::run_scaler() {
    std::unique_lock lock(mutex_);
    while (!stopping_) {
        poked_ = false;
        lock.unlock();
        for (auto& rt : runtime_) {
            rt->wants_demand = true;
            rt->wants_idle = true;
        }
        stop_requested_groups();
        const auto loads = collect_loads();
        const auto plan = plan_scaling(loads, budget_.limit(), time_.now());
        bool progress = false;
        bool blocked = plan.budget_blocked;
        for (const auto& action : plan.actions) {
            {
                std::lock_guard check(mutex_);
                if (stopping_) {
                    break;
                }
            }
            const bool done = act(action);
            progress = progress || done;
            blocked = blocked || !done;
        }
        if (plan.budget_blocked) {
            log_.debug("pool", "worker_budget_full", {{"budget", budget_.limit()}});
        }
        if (!progress) {
            for (std::size_t i = 0; i < loads.size(); ++i) {
                const auto interest = scaler_interest(loads[i], plan.budget_blocked);
                runtime_[i]->wants_demand = interest.demand;
                runtime_[i]->wants_idle = interest.idle;
            }
        }
        lock.lock();
        if (stopping_ || progress) {
            continue;  // something changed: plan again at once
        }
        auto until = Clock::now() + (blocked ? kRetryBlocked : std::chrono::hours(24));
        if (plan.next_check) {
            // The plan's time is the injected clock's; the wait needs the real one.
            until = std::min(until, Clock::now() + (*plan.next_check - time_.now()));
        }
        cv_.wait_until(lock, until, [this] { return poked_ || stopping_; });
    }
}

std::vector<std::string> GroupSet::reload(const PoolConfig& target,
                                          std::vector<std::string>& not_applied) {
    const auto resolved = resolve_groups(target, std::thread::hardware_concurrency());
    std::vector<std::string> rolled;
    bool same_groups = resolved.size() == groups_.size();
    for (std::size_t i = 0; same_groups && i < resolved.size(); ++i) {
        const auto& now = groups_[i]->spec();
        const auto& next = resolved[i].spec;
        // An always-on group's min_workers is its workers, which a rollout does change.
        const bool always_on = now.min_workers >= now.workers && next.min_workers >= next.workers;
        same_groups = now.name == next.name && now.aliases == next.aliases &&
                      now.endpoints == next.endpoints && now.is_default == next.is_default &&
                      (always_on || now.min_workers == next.min_workers) &&
                      now.idle_stop == next.idle_stop;
    }
    if (!same_groups) {
        not_applied.emplace_back(
            "groups (names, aliases, endpoints, default, min_workers, "
            "idle_stop)");
        return rolled;
    }
    for (std::size_t i = 0; i < resolved.size(); ++i) {
        auto& g = *groups_[i];
        if (resolved[i].config == g.supervisor().config()) {
            continue;  // unchanged: it keeps serving untouched
        }
        if (g.supervisor().rolling_restart(resolved[i].config) ==
            Supervisor::RolloutStart::started) {
            rolled.push_back(g.name());
        }
    }
    if (!rolled.empty()) {
        poke();  // new bounds: what the scaler listens for (scaler_interest) may have changed
    }
    return rolled;
}

bool GroupSet::rollout_running() const {
    return std::any_of(groups_.begin(), groups_.end(),
                       [](const auto& g) { return g->supervisor().rollout_running(); });
}

}  // namespace llama_pool
