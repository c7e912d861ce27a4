#pragma once

#include <cstddef>
#include <optional>
#include <vector>

#include "common/random.hpp"

namespace llama_pool {

struct BackendLoad {
    int inflight = 0;
    int capacity = 0;
    bool avoid = false;  // already failed this request: used only when nothing else can serve
    double weight = 1;   // relative share of traffic
};

// least-loaded: the highest weight x free share of slots (1 - inflight/capacity) among
// backends with a free slot, which with equal weights is the lowest load; among equal
// scores, two are drawn at random and the less busy wins (power of two choices), which
// spreads ties without herding every request onto the same index. Slots always cap a
// backend, whatever its weight. Pure.
std::optional<std::size_t> choose_least_loaded(const std::vector<BackendLoad>& backends,
                                               RandomSource& random);

}  // namespace llama_pool
