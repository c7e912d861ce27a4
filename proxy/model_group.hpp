#pragma once

#include <string>

#include "common/config.hpp"
#include "common/log.hpp"
#include "common/random.hpp"
#include "proxy/backend_registry.hpp"
#include "proxy/pool_metrics.hpp"
#include "proxy/relay.hpp"
#include "supervisor/supervisor.hpp"

namespace llama_pool {

// The registry options (balancer, queue, breakers) a config asks for.
RegistryOptions registry_options(const PoolConfig& config);

// One model group: its workers (supervisor), what can take its traffic (registry: its own
// fair queue, capacity and breakers) and its relay (its own retry budget and Retry-After
// estimate). Not movable: the relay and the supervisor hold references into it.
class ModelGroup {
  public:
    ModelGroup(const ResolvedGroup& resolved, Logger& log, RandomSource& random,
               const TimeSource& time, PoolMetrics& metrics, WorkerBudget* budget);
    ModelGroup(const ModelGroup&) = delete;
    ModelGroup& operator=(const ModelGroup&) = delete;

    const std::string& name() const { return spec_.name; }
    // Name, aliases, bounds as configured (min_workers and workers resolved).
    const GroupConfig& spec() const { return spec_; }
    // The group's effective settings (the pool's with the group's overrides).
    const PoolConfig& config() const { return config_; }
    bool implicit() const { return implicit_; }
    // The `group` label of its metric series: empty (no label) for the implicit group, whose
    // series keep the labels they had before groups existed.
    const std::string& metrics_label() const { return metrics_label_; }
    BackendRegistry& registry() { return registry_; }
    Supervisor& supervisor() { return supervisor_; }
    Relay& relay() { return relay_; }

  private:
    const GroupConfig spec_;
    const PoolConfig config_;
    const bool implicit_;
    const std::string metrics_label_;
    BackendRegistry registry_;
    Supervisor supervisor_;
    Relay relay_;
};

}  // namespace llama_pool
