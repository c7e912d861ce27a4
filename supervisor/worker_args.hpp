#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/config.hpp"

namespace llama_pool {

// Threads per worker: `configured` when set, else the cores divided among the workers
// (never below one), so N workers never oversubscribe the CPU.
int threads_per_worker(int configured, int workers, unsigned cores);

// The argv (without the program) for one worker. The pool adds only what it must: model,
// loopback address and port, threads, context, slots, metrics, and its per-boot API key:
// as --api-key-file when `api_key_file` is set (a command line is readable by every user
// on the machine), else as --api-key. It never adds a server-wide -n (which would cap every
// request's n_predict). The user's worker_args come last, so they can override ours.
std::vector<std::string> build_worker_args(const PoolConfig& config, std::uint16_t port,
                                           int threads, const std::string& api_key,
                                           const std::string& api_key_file = {});

// True when the worker's own arguments make it an embeddings server (--embedding or
// --embeddings): llama-server then refuses completions, so its warm-up and inference probes
// ask for an embedding instead.
bool embeddings_only(const PoolConfig& config);

}  // namespace llama_pool
