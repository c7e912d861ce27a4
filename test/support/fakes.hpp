#pragma once

#include <vector>

#include "common/clock.hpp"
#include "common/random.hpp"

namespace llama_pool::test {

// Returns the given values in turn, repeating the last one.
class ScriptedRandom final : public RandomSource {
  public:
    explicit ScriptedRandom(std::vector<double> values) : values_(std::move(values)) {}
    double uniform() override {
        const double v = values_[std::min(next_, values_.size() - 1)];
        ++next_;
        return v;
    }

  private:
    std::vector<double> values_;
    std::size_t next_ = 0;
};

class FakeTime final : public TimeSource {
  public:
    TimePoint now() const override { return now_; }
    void advance(Duration d) { now_ += d; }

  private:
    TimePoint now_{};
};

}  // namespace llama_pool::test
