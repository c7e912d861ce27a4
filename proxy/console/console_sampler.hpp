#pragma once

#include <array>
#include <cstddef>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string_view>
#include <vector>

#include "common/clock.hpp"
#include "proxy/console/series_ring.hpp"

namespace llama_pool {

// The console's charts. Each has one point per tick.
enum class ConsoleSeries { requests_per_s, tokens_per_s, queue_depth, p95_latency_s };
inline constexpr std::array<ConsoleSeries, 4> kConsoleSeries = {
    ConsoleSeries::requests_per_s, ConsoleSeries::tokens_per_s, ConsoleSeries::queue_depth,
    ConsoleSeries::p95_latency_s};
std::string_view to_string(ConsoleSeries s);

// Whether a finished request counts as traffic on the charts: inference and tokenizer calls
// do; the pool's own pages, probes, scrapes and metadata reads do not (the console's own
// polling would otherwise draw itself). `route` is a route_label().
bool counts_as_traffic(std::string_view route);

// Small in-memory history for the console, so that its charts need no Prometheus: requests
// finished, tokens generated, queue depth and p95 latency, one point per tick in rings of
// `capacity` points (900 ticks of 1 s: the last 15 minutes). Time comes from the injected
// TimeSource; the owner calls tick() once per period. Thread-safe: request threads call
// request_done(), one ticker calls tick(), readers take JSON.
class ConsoleSampler {
  public:
    ConsoleSampler(const TimeSource& time, std::function<double()> queue_depth,
                   std::size_t capacity = 900);

    void request_done(std::string_view route, double seconds, long long tokens_predicted);
    // Closes the interval since the previous tick: one point on every ring. The first tick
    // only starts the first interval.
    void tick();

    // {"now_ms", "series": {name: [[t_ms, value|null], ...]}}, oldest first.
    nlohmann::json history_json() const;
    // The newest point of every series: {"t_ms", name: value|null, ...}; null before the
    // first interval has closed.
    nlohmann::json latest_json() const;

  private:
    // Latencies kept per interval for the p95; beyond this a busy second is sampled by its
    // first requests, which bounds memory and the sort.
    static constexpr std::size_t kMaxLatencies = 8192;

    const TimeSource& time_;
    std::function<double()> queue_depth_;
    mutable std::mutex mutex_;
    // Guarded by mutex_:
    std::vector<SeriesRing> rings_;  // indexed by ConsoleSeries
    std::vector<double> latencies_;  // this interval's
    double requests_ = 0;            // this interval's
    double tokens_ = 0;              // this interval's
    bool started_ = false;
    TimePoint last_tick_{};
    TimePoint origin_{};
};

// The 95th percentile (nearest rank) of `values`, NaN when empty. Reorders `values`.
double p95(std::vector<double>& values);

}  // namespace llama_pool
