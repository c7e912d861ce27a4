#include "supervisor/worker_args.hpp"

#include <algorithm>

namespace llama_pool {

int threads_per_worker(int configured, int workers, unsigned cores) {
    if (configured > 0) {
        return configured;
    }
    const int n = std::max(1, workers);
    return std::max(1, static_cast<int>(cores) / n);
}

std::vector<std::string> build_worker_args(const PoolConfig& config, std::uint16_t port,
                                           int threads, const std::string& api_key,
                                           const std::string& api_key_file) {
    std::vector<std::string> args = {
        "--model",    config.model,
        "--host",     "127.0.0.1",
        "--port",     std::to_string(port),
        "--threads",  std::to_string(threads),
        "--parallel", std::to_string(config.parallel),
    };
    if (config.ctx_size > 0) {
        args.insert(args.end(), {"--ctx-size", std::to_string(config.ctx_size)});
    }
    // Both flags exist in every server we run: current llama.cpp and BitNet's 2024 fork,
    // which serves /slots only with --slots. legacy_flags therefore drops nothing.
    args.emplace_back("--metrics");
    args.emplace_back("--slots");
    if (!api_key_file.empty()) {
        args.insert(args.end(), {"--api-key-file", api_key_file});
    } else if (!api_key.empty()) {
        args.insert(args.end(), {"--api-key", api_key});
    }
    args.insert(args.end(), config.worker_args.begin(), config.worker_args.end());
    return args;
}

bool embeddings_only(const PoolConfig& config) {
    return std::any_of(
        config.worker_args.begin(), config.worker_args.end(),
        [](const std::string& a) { return a == "--embedding" || a == "--embeddings"; });
}

}  // namespace llama_pool
