#include "proxy/balancer.hpp"

namespace llama_pool {

std::optional<std::size_t> choose_least_loaded(const std::vector<BackendLoad>& backends,
                                               RandomSource& random) {
    for (const bool allow_avoided : {false, true}) {
        std::vector<std::size_t> best;
        double best_score = -1.0;
        for (std::size_t i = 0; i < backends.size(); ++i) {
            const auto& b = backends[i];
            if (b.capacity <= 0 || b.inflight >= b.capacity || (b.avoid && !allow_avoided)) {
                continue;
            }
            const double score = b.weight * (1.0 - static_cast<double>(b.inflight) / b.capacity);
            if (score > best_score + 1e-9) {
                best_score = score;
                best.assign(1, i);
            } else if (score >= best_score - 1e-9) {
                best.push_back(i);
            }
        }
        if (best.size() == 1) {
            return best.front();
        }
        if (!best.empty()) {
            const auto pick = [&] {
                return best[static_cast<std::size_t>(random.uniform() * best.size()) % best.size()];
            };
            const auto a = pick();
            const auto b = pick();
            return backends[b].inflight < backends[a].inflight ? b : a;
        }
    }
    return std::nullopt;
}

}  // namespace llama_pool
