#pragma once

#include <mutex>
#include <random>

namespace llama_pool {

// Jitter and tie-breaking draw from this interface so tests can make them deterministic.
class RandomSource {
  public:
    virtual ~RandomSource() = default;
    // Uniform in [0, 1).
    virtual double uniform() = 0;
};

// Thread-safe; the lock is uncontended in practice (jitter is drawn per retry, not per byte).
class SeededRandom final : public RandomSource {
  public:
    explicit SeededRandom(unsigned long long seed = std::random_device{}()) : engine_(seed) {}
    double uniform() override {
        std::lock_guard lock(mutex_);
        return std::uniform_real_distribution<double>(0.0, 1.0)(engine_);
    }

  private:
    std::mutex mutex_;
    std::mt19937_64 engine_;
};

}  // namespace llama_pool
