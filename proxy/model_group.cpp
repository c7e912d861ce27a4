#include "proxy/model_group.hpp"

namespace llama_pool {

RegistryOptions registry_options(const PoolConfig& config) {
    RegistryOptions options;
    options.policy = parse_balancer_policy(config.balancer);
    options.queue_max = static_cast<std::size_t>(config.queue_max);
    options.priority_aging = from_seconds(config.priority_aging);
    options.light_per_worker = config.light_connections;
    options.breaker.consecutive_failures = config.breaker_failures;
    options.breaker.failure_ratio = config.breaker_failure_ratio;
    options.breaker.window = from_seconds(config.breaker_window);
    options.breaker.base_ejection = from_seconds(config.breaker_ejection);
    options.breaker.max_ejection = from_seconds(config.breaker_max_ejection);
    options.breaker.half_open_trials = config.breaker_half_open_trials;
    return options;
}

namespace {

SupervisorOptions supervisor_options(const ResolvedGroup& g, WorkerBudget* budget) {
    SupervisorOptions options;
    // The one group of a config without `groups` keeps the ids it always had ("0", "1").
    options.id_prefix = g.implicit ? "" : g.spec.name + ".";
    options.initial_workers = g.spec.min_workers;
    // An always-on group (min_workers = workers) follows its workers setting through reloads.
    options.min_workers = g.spec.min_workers >= g.spec.workers ? -1 : g.spec.min_workers;
    options.budget = budget;
    return options;
}

}  // namespace

ModelGroup::ModelGroup(const ResolvedGroup& resolved, Logger& log, RandomSource& random,
                       const TimeSource& time, PoolMetrics& metrics, WorkerBudget* budget)
    : spec_(resolved.spec),
      config_(resolved.config),
      implicit_(resolved.implicit),
      metrics_label_(resolved.implicit ? "" : resolved.spec.name),
      registry_(random, time, registry_options(config_)),
      supervisor_(config_, log, registry_, random, supervisor_options(resolved, budget)),
      relay_(config_, registry_, log, random, metrics, metrics_label_) {}

}  // namespace llama_pool
