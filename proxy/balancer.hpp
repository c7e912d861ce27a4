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
};

// least-loaded: the lowest inflight/capacity among backends with a free slot; among equally
// loaded ones, two are drawn at random and the first wins (power of two choices), which
// spreads ties without herding every request onto the same index. Pure.
std::optional<std::size_t> choose_least_loaded(const std::vector<BackendLoad>& backends,
                                               RandomSource& random);

}  // namespace llama_pool
