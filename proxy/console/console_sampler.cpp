#include "proxy/console/console_sampler.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace llama_pool {

std::string_view to_string(ConsoleSeries s) {
    switch (s) {
        case ConsoleSeries::requests_per_s:
            return "requests_per_s";
        case ConsoleSeries::tokens_per_s:
            return "tokens_per_s";
        case ConsoleSeries::queue_depth:
            return "queue_depth";
        case ConsoleSeries::p95_latency_s:
            return "p95_latency_s";
    }
    return "unknown";
}

bool counts_as_traffic(std::string_view route) {
    constexpr std::array<std::string_view, 9> not_traffic = {
        "/pool", "/health", "/metrics", "/", "/props", "/slots", "/v1/models", "/models", "other"};
    return std::find(not_traffic.begin(), not_traffic.end(), route) == not_traffic.end();
}

double p95(std::vector<double>& values) {
    if (values.empty()) {
        return std::numeric_limits<double>::quiet_NaN();
    }
    // Nearest rank: the smallest value with at least 95% of the values at or below it.
    const auto rank =
        static_cast<std::size_t>(std::ceil(0.95 * static_cast<double>(values.size())));
    const auto nth = values.begin() + static_cast<std::ptrdiff_t>(rank - 1);
    std::nth_element(values.begin(), nth, values.end());
    return *nth;
}

ConsoleSampler::ConsoleSampler(const TimeSource& time, std::function<double()> queue_depth,
                               std::size_t capacity)
    : time_(time), queue_depth_(std::move(queue_depth)), origin_(time.now()) {
    rings_.assign(kConsoleSeries.size(), SeriesRing(capacity));
}

void ConsoleSampler::request_done(std::string_view route, double seconds,
                                  long long tokens_predicted) {
    if (!counts_as_traffic(route)) {
        return;
    }
    std::lock_guard lock(mutex_);
    requests_ += 1;
    tokens_ += static_cast<double>(std::max(0LL, tokens_predicted));
    if (latencies_.size() < kMaxLatencies) {
        latencies_.push_back(seconds);
    }
}

void ConsoleSampler::tick() {
    // Read outside the lock: the depth comes from the registries, which have locks of their own.
    const double depth = queue_depth_ ? queue_depth_() : 0;
    const auto now = time_.now();
    std::lock_guard lock(mutex_);
    if (!started_ || now <= last_tick_) {
        // Nothing to divide by yet; what arrived before the first tick is dropped with it.
        started_ = true;
        last_tick_ = now;
        requests_ = tokens_ = 0;
        latencies_.clear();
        return;
    }
    const double dt = to_seconds(now - last_tick_);
    const std::int64_t t = to_millis(now - origin_);
    auto ring = [&](ConsoleSeries s) -> SeriesRing& { return rings_[static_cast<std::size_t>(s)]; };
    ring(ConsoleSeries::requests_per_s).push({t, requests_ / dt});
    ring(ConsoleSeries::tokens_per_s).push({t, tokens_ / dt});
    ring(ConsoleSeries::queue_depth).push({t, depth});
    ring(ConsoleSeries::p95_latency_s).push({t, p95(latencies_)});
    last_tick_ = now;
    requests_ = tokens_ = 0;
    latencies_.clear();
}

namespace {

nlohmann::json value_json(double v) {
    return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
}

}  // namespace

nlohmann::json ConsoleSampler::history_json() const {
    const auto now = to_millis(time_.now() - origin_);
    std::lock_guard lock(mutex_);
    nlohmann::json series = nlohmann::json::object();
    for (const auto s : kConsoleSeries) {
        nlohmann::json points = nlohmann::json::array();
        for (const auto& p : rings_[static_cast<std::size_t>(s)].points()) {
            points.push_back(nlohmann::json::array({p.t_ms, value_json(p.value)}));
        }
        series[std::string(to_string(s))] = std::move(points);
    }
    return {
        {"now_ms", now}, {"capacity", rings_.front().capacity()}, {"series", std::move(series)}};
}

nlohmann::json ConsoleSampler::latest_json() const {
    std::lock_guard lock(mutex_);
    nlohmann::json out = nlohmann::json::object();
    out["t_ms"] = nullptr;
    for (const auto s : kConsoleSeries) {
        const auto& ring = rings_[static_cast<std::size_t>(s)];
        if (ring.size() == 0) {
            out[std::string(to_string(s))] = nullptr;
            continue;
        }
        out["t_ms"] = ring.latest().t_ms;
        out[std::string(to_string(s))] = value_json(ring.latest().value);
    }
    return out;
}

}  // namespace llama_pool
