#pragma once

#include <csignal>
#include <functional>

#include "common/config.hpp"
#include "common/log.hpp"

namespace llama_pool {

// Runs the pool until SIGINT/SIGTERM. The caller must have blocked `signals` in every thread
// (before any was created) so that they arrive here through sigwait. Returns the exit code.
// SIGHUP calls `reload` (which re-reads flags, environment and file) and, when the result is
// valid, replaces the workers one at a time with ones built from it.
int serve(const PoolConfig& config, Logger& log, const sigset_t& signals,
          const std::function<ConfigResult()>& reload);

}  // namespace llama_pool
