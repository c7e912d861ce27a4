#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace llama_pool {

// One sample of a console chart: when (milliseconds on the pool's steady clock) and what.
struct SeriesPoint {
    std::int64_t t_ms = 0;
    double value = 0;
};

// The last `capacity` points of one series; a push beyond that overwrites the oldest, so
// memory stays fixed however long the pool runs. Not thread-safe: ConsoleSampler guards it.
class SeriesRing {
  public:
    explicit SeriesRing(std::size_t capacity) : points_(capacity == 0 ? 1 : capacity) {}

    void push(SeriesPoint p) {
        points_[next_] = p;
        next_ = (next_ + 1) % points_.size();
        if (size_ < points_.size()) {
            ++size_;
        }
    }
    std::size_t size() const { return size_; }
    std::size_t capacity() const { return points_.size(); }
    // The newest point; only when size() > 0.
    const SeriesPoint& latest() const {
        return points_[(next_ + points_.size() - 1) % points_.size()];
    }
    // Oldest first.
    std::vector<SeriesPoint> points() const {
        std::vector<SeriesPoint> out;
        out.reserve(size_);
        const std::size_t first = (next_ + points_.size() - size_) % points_.size();
        for (std::size_t i = 0; i < size_; ++i) {
            out.push_back(points_[(first + i) % points_.size()]);
        }
        return out;
    }

  private:
    std::vector<SeriesPoint> points_;
    std::size_t next_ = 0;  // where the next push goes
    std::size_t size_ = 0;
};

}  // namespace llama_pool
