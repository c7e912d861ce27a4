#pragma once

#include <csignal>

#include "common/config.hpp"
#include "common/log.hpp"

namespace llama_pool {

// Runs the pool until SIGINT/SIGTERM. The caller must have blocked `signals` in every thread
// (before any was created) so that they arrive here through sigwait. Returns the exit code.
int serve(const PoolConfig& config, Logger& log, const sigset_t& signals);

}  // namespace llama_pool
