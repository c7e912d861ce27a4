#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

// The pool's own metrics, rendered in Prometheus text format 0.0.4.
//
// Updating a metric is a few relaxed atomic operations and takes no lock. Looking a labeled
// child up takes its family's lock, so hot paths look children up once and keep the
// reference: children are never removed and live as long as their family (and so as long as
// the registry that owns it).
//
//     MetricsRegistry registry;
//     auto& requests = registry.counter("llama_pool_requests_total", "Requests relayed.",
//                                       {"worker", "status"});
//     Counter& ok_on_0 = requests.labels({"0", "200"});  // once
//     ok_on_0.inc();                                      // per request

namespace llama_pool {

// A value that only goes up.
class Counter {
  public:
    // Throws std::invalid_argument for a negative or NaN increment: a counter that goes down
    // reads as a process restart to Prometheus' rate().
    void inc(double v = 1);
    double value() const { return value_.load(std::memory_order_relaxed); }

  private:
    std::atomic<double> value_{0};
};

// A value that goes up and down.
class Gauge {
  public:
    void set(double v) { value_.store(v, std::memory_order_relaxed); }
    void inc(double v = 1) { value_.fetch_add(v, std::memory_order_relaxed); }
    void dec(double v = 1) { value_.fetch_sub(v, std::memory_order_relaxed); }
    double value() const { return value_.load(std::memory_order_relaxed); }

  private:
    std::atomic<double> value_{0};
};

struct HistogramSnapshot {
    std::vector<double> upper_bounds;  // without the implicit +Inf
    // Cumulative: entry i counts observations <= upper_bounds[i]; the last entry is +Inf.
    std::vector<std::uint64_t> cumulative_counts;
    double sum = 0;
    std::uint64_t count = 0;  // always equal to cumulative_counts.back()
};

class Histogram {
  public:
    // `upper_bounds` must be strictly increasing and not NaN; a trailing +Inf is accepted
    // and dropped (the +Inf bucket always exists). Throws std::invalid_argument otherwise.
    explicit Histogram(std::vector<double> upper_bounds);

    // NaN observations land in the +Inf bucket (and make the sum NaN), as in Prometheus'
    // own clients.
    void observe(double v);

    // Concurrent observations may be half-seen (counted but not yet in the sum), but the
    // count always equals the +Inf bucket.
    HistogramSnapshot snapshot() const;

    const std::vector<double>& upper_bounds() const { return upper_bounds_; }

  private:
    std::vector<double> upper_bounds_;
    // Per bucket, not cumulative: one increment per observation. The last is +Inf.
    std::vector<std::atomic<std::uint64_t>> bucket_counts_;
    std::atomic<double> sum_{0};
};

// What every family has, whatever its metric type: the registry renders through this.
class FamilyBase {
  public:
    virtual ~FamilyBase() = default;
    FamilyBase(const FamilyBase&) = delete;
    FamilyBase& operator=(const FamilyBase&) = delete;

    const std::string& name() const { return name_; }
    const std::string& help() const { return help_; }
    const std::vector<std::string>& label_names() const { return label_names_; }

    // Appends HELP, TYPE and every child's samples.
    virtual void render(std::string& out) const = 0;

  protected:
    // Throws std::invalid_argument for an invalid metric or label name, or a repeated label.
    FamilyBase(std::string name, std::string help, std::vector<std::string> label_names);

  private:
    std::string name_;
    std::string help_;
    std::vector<std::string> label_names_;
};

// One metric name and its children, one child per combination of label values.
template <class Metric>
class Family final : public FamilyBase {
  public:
    using Factory = std::function<std::unique_ptr<Metric>()>;

    // A family without labels has its one child from the start, so it renders (as 0) before
    // its first update. `make_child` builds children (histograms need their bounds).
    Family(
        std::string name, std::string help, std::vector<std::string> label_names,
        Factory make_child = [] { return std::make_unique<Metric>(); });

    // The child for these label values, in the order of label_names(), created on first
    // use. The reference stays valid for the family's lifetime. Throws
    // std::invalid_argument when the number of values differs from the number of labels.
    Metric& labels(const std::vector<std::string>& values);
    Metric& labels(std::initializer_list<std::string> values) {
        return labels(std::vector<std::string>(values));
    }
    // The child of a family without labels.
    Metric& get() { return labels(std::vector<std::string>{}); }

    void render(std::string& out) const override;

  private:
    Factory make_child_;
    mutable std::mutex mutex_;
    // Ordered, so children render sorted by label values, the same on every scrape.
    std::map<std::vector<std::string>, std::unique_ptr<Metric>> children_;
};

extern template class Family<Counter>;
extern template class Family<Gauge>;
extern template class Family<Histogram>;

// Owns the pool's metric families and renders them, followed by whatever the collectors
// add at scrape time, as one exposition. Thread-safe.
class MetricsRegistry {
  public:
    // Appends complete families (HELP, TYPE, samples) in exposition format. Called on every
    // render(), outside the registry's lock. A collector that throws contributes nothing to
    // that scrape; the rest of the exposition is still produced.
    using Collector = std::function<void(std::string& out)>;

    MetricsRegistry() = default;
    MetricsRegistry(const MetricsRegistry&) = delete;
    MetricsRegistry& operator=(const MetricsRegistry&) = delete;

    // Each throws std::invalid_argument for an invalid name or label name, or a name already
    // taken (by a family or by a histogram's _bucket/_sum/_count samples).
    Family<Counter>& counter(std::string name, std::string help,
                             std::vector<std::string> label_names = {});
    Family<Gauge>& gauge(std::string name, std::string help,
                         std::vector<std::string> label_names = {});
    // Also throws for bounds Histogram refuses, and for a label named "le".
    Family<Histogram>& histogram(std::string name, std::string help,
                                 std::vector<std::string> label_names,
                                 std::vector<double> upper_bounds);

    void add_collector(Collector collector);

    // Families in registration order, then the collectors' output in the order added.
    std::string render() const;

  private:
    template <class Metric>
    Family<Metric>& add(std::unique_ptr<Family<Metric>> family,
                        const std::vector<std::string>& sample_names);

    mutable std::mutex mutex_;
    std::vector<std::unique_ptr<FamilyBase>> families_;
    std::set<std::string> taken_names_;
    std::vector<Collector> collectors_;
};

// Buckets for LLM latencies in seconds, from a few milliseconds (time to first token of a
// cached prompt) to ten minutes (long generations on a CPU).
std::vector<double> llm_latency_buckets();

}  // namespace llama_pool
