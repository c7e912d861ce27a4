#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/config.hpp"
#include "common/http_message.hpp"
#include "common/log.hpp"
#include "common/random.hpp"
#include "proxy/group_router.hpp"
#include "proxy/model_group.hpp"
#include "supervisor/group_scaling.hpp"
#include "supervisor/worker_budget.hpp"

namespace llama_pool {

// Every model group of the pool, the router that picks one per request, the worker budget
// they share, and the scaler: one thread that starts workers for requests waiting on a
// group, stops idle ones and moves budget places between groups (supervisor/group_scaling
// decides; this class acts). Thread-safe.
//
// Lock order: a registry's lock, then this class's mutex_ (the registries' activity hooks
// take it). The scaler thread never holds mutex_ while it reads a registry or calls a
// supervisor.
class GroupSet {
  public:
    GroupSet(const PoolConfig& config, Logger& log, RandomSource& random, const TimeSource& time,
             PoolMetrics& metrics);
    ~GroupSet();
    GroupSet(const GroupSet&) = delete;
    GroupSet& operator=(const GroupSet&) = delete;

    // Starts every group's initial workers and the scaler.
    void start();
    // Ends the scaler, then drains and stops every group's workers (up to `drain_grace`).
    void stop(Duration drain_grace);
    // Asks every worker to stop now (a second signal).
    void hurry();
    // No request waits or is admitted any more (shutdown).
    void shutdown_registries();

    // The group that serves a request, by its model, then its path; see GroupRouter.
    ModelGroup& route(const HttpRequest& request, std::string_view path,
                      GroupMatch* match = nullptr);
    // The group for a model name and path, by the same rules (for work the pool makes itself).
    ModelGroup& route_model(std::string_view model, std::string_view path);
    // A group by name or alias; null when none has it.
    ModelGroup* find(std::string_view name);
    ModelGroup& default_group() { return *groups_[default_]; }
    const std::vector<std::unique_ptr<ModelGroup>>& groups() const { return groups_; }
    // True when the config has no `groups`: one group made of the workers.* settings.
    bool implicit() const { return groups_.size() == 1 && groups_.front()->implicit(); }
    const WorkerBudget& budget() const { return budget_; }

    enum class AdminResult { accepted, not_found, stopping };
    // Start: bring the group to its `workers` and keep it there. Stop: drain and stop its
    // workers now; requests for it start it again on demand.
    AdminResult start_group(std::string_view name);
    AdminResult stop_group(std::string_view name);
    // Whether the group is held up or down by an admin action ("" when not).
    std::string admin_hold(const ModelGroup& group) const;

    // A new config (SIGHUP): every group whose settings changed is rolled over, the others
    // keep serving. Returns the group names rolled over; `not_applied` gets what needs a
    // pool restart (groups added, removed or renamed, routing keys).
    std::vector<std::string> reload(const PoolConfig& target,
                                    std::vector<std::string>& not_applied);
    bool rollout_running() const;

  private:
    struct Runtime {
        std::atomic<int> min_override{-1};  // admin start/stop; -1: none
        std::atomic<bool> stop_requested{false};
        TimePoint last_scaled{};  // scaler thread only
        // Which registry activity wakes the scaler (scaler_interest). The scaler sets both
        // before it reads the loads, so that nothing after that read is missed, and clears
        // what its plan says cannot matter.
        std::atomic<bool> wants_demand{true};
        std::atomic<bool> wants_idle{true};
    };
    AdminResult hold(std::string_view name, bool up);
    void poke();
    void run_scaler();
    std::vector<GroupLoad> collect_loads();
    bool act(const ScaleAction& action);
    void stop_requested_groups();

    PoolConfig config_;
    Logger& log_;
    const TimeSource& time_;
    WorkerBudget budget_;
    std::vector<std::unique_ptr<ModelGroup>> groups_;
    std::vector<std::unique_ptr<Runtime>> runtime_;
    std::unique_ptr<GroupRouter> router_;
    std::size_t default_ = 0;

    mutable std::mutex mutex_;
    std::condition_variable cv_;
    bool poked_ = false;
    bool stopping_ = false;
    std::thread scaler_;
};

}  // namespace llama_pool
