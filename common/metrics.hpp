#pragma once

#include <prometheus/metric_family.h>

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

// The pool's own metrics, kept and serialized by prometheus-cpp (Prometheus text format
// 0.0.4), behind the small interface the pool's code was written against.
//
// What this layer adds to prometheus-cpp, and why:
//  - label values are given positionally, in the order the family declared its labels, and
//    a label whose value is empty is left out of the series (Prometheus reads it as absent
//    anyway; a `group` label that only pools with groups need costs the others nothing);
//  - labels render in declared order and children sorted by label values, so the text is
//    the same on every scrape and reads as it always did;
//  - label values are made valid UTF-8 (Prometheus refuses a whole scrape over one bad
//    value), and counters throw on a negative increment instead of ignoring it;
//  - collectors add families computed at scrape time (state that lives elsewhere is read,
//    not mirrored).
//
// Updating a counter or gauge is a relaxed atomic operation; a histogram observation takes
// its child's own short lock (prometheus-cpp's). Looking a labeled child up takes its
// family's lock, so hot paths look children up once and keep the reference: children are
// never removed and live as long as their family (and so as long as the registry).
//
//     MetricsRegistry registry;
//     auto& requests = registry.counter("llama_pool_requests_total", "Requests relayed.",
//                                       {"worker", "status"});
//     Counter& ok_on_0 = requests.labels({"0", "200"});  // once
//     ok_on_0.inc();                                      // per request

namespace prometheus {
class Counter;
class Gauge;
class Histogram;
class Registry;
template <typename T>
class Family;
}  // namespace prometheus

namespace llama_pool {

// A value that only goes up.
class Counter {
  public:
    using Impl = prometheus::Counter;
    explicit Counter(prometheus::Counter& impl) : impl_(&impl) {}
    // Throws std::invalid_argument for a negative or NaN increment: a counter that goes down
    // reads as a process restart to Prometheus' rate().
    void inc(double v = 1);
    double value() const;

  private:
    prometheus::Counter* impl_;
};

// A value that goes up and down.
class Gauge {
  public:
    using Impl = prometheus::Gauge;
    explicit Gauge(prometheus::Gauge& impl) : impl_(&impl) {}
    void set(double v);
    void inc(double v = 1);
    void dec(double v = 1);
    double value() const;

  private:
    prometheus::Gauge* impl_;
};

struct HistogramSnapshot {
    std::vector<double> upper_bounds;  // without the implicit +Inf
    // Cumulative: entry i counts observations <= upper_bounds[i]; the last entry is +Inf.
    std::vector<std::uint64_t> cumulative_counts;
    double sum = 0;
    std::uint64_t count = 0;
};

class Histogram {
  public:
    using Impl = prometheus::Histogram;
    explicit Histogram(prometheus::Histogram& impl) : impl_(&impl) {}
    // NaN observations land in the +Inf bucket (and make the sum NaN).
    void observe(double v);
    HistogramSnapshot snapshot() const;

  private:
    prometheus::Histogram* impl_;
};

// One metric name and its children, one child per combination of label values.
template <class Metric>
class Family {
  public:
    using Impl = prometheus::Family<typename Metric::Impl>;

    // `bounds` is used by histograms only (already checked).
    Family(Impl& impl, std::vector<std::string> label_names, std::vector<double> bounds);
    Family(const Family&) = delete;
    Family& operator=(const Family&) = delete;

    const std::vector<std::string>& label_names() const { return label_names_; }

    // The child for these label values, in the order of label_names(), created on first
    // use. The reference stays valid for the family's lifetime. Throws
    // std::invalid_argument when the number of values differs from the number of labels.
    Metric& labels(const std::vector<std::string>& values);
    Metric& labels(std::initializer_list<std::string> values) {
        return labels(std::vector<std::string>(values));
    }
    // The child of a family without labels.
    Metric& get() { return labels(std::vector<std::string>{}); }

  private:
    Impl* impl_;
    std::vector<std::string> label_names_;
    std::vector<double> bounds_;
    std::mutex mutex_;
    std::map<std::vector<std::string>, std::unique_ptr<Metric>> children_;
};

// A family computed at scrape time, built sample by sample. Labels with an empty value are
// left out, as for registered families; values are made valid UTF-8.
class CollectedFamily {
  public:
    enum class Type { counter, gauge };
    CollectedFamily(std::string name, std::string help, Type type);
    CollectedFamily& add(std::vector<std::pair<std::string, std::string>> labels, double value);
    prometheus::MetricFamily take() { return std::move(family_); }

  private:
    prometheus::MetricFamily family_;
};

// Owns the pool's metric families and renders them, followed by what the collectors add at
// scrape time, as one exposition. Thread-safe.
class MetricsRegistry {
  public:
    // Families computed at scrape time, serialized with the registered ones.
    using Collector = std::function<std::vector<prometheus::MetricFamily>()>;

    MetricsRegistry();
    ~MetricsRegistry();
    MetricsRegistry(const MetricsRegistry&) = delete;
    MetricsRegistry& operator=(const MetricsRegistry&) = delete;

    // Each throws std::invalid_argument for an invalid name or label name, or a name already
    // taken (by a family or by a histogram's _bucket/_sum/_count samples).
    Family<Counter>& counter(const std::string& name, const std::string& help,
                             std::vector<std::string> label_names = {});
    Family<Gauge>& gauge(const std::string& name, const std::string& help,
                         std::vector<std::string> label_names = {});
    // Also throws for bounds that are not strictly increasing numbers (a trailing +Inf is
    // accepted and dropped), and for a label named "le".
    Family<Histogram>& histogram(const std::string& name, const std::string& help,
                                 std::vector<std::string> label_names,
                                 std::vector<double> upper_bounds);

    // Called on every render(), outside the registry's lock. A collector that throws
    // contributes nothing to that scrape; the rest of the exposition is still produced.
    void add_collector(Collector collector);

    // Registered families in registration order, then `first` (families the caller computed
    // for this scrape), then the collectors' families.
    std::string render(std::vector<prometheus::MetricFamily> first = {}) const;

  private:
    struct Declared {
        std::string help;
        prometheus::MetricType type;
        std::vector<std::string> label_names;
    };
    void take_names(const std::vector<std::string>& names, Declared declared);

    mutable std::mutex mutex_;
    std::unique_ptr<prometheus::Registry> registry_;
    std::set<std::string> taken_names_;
    // Registered families in registration order, as declared: render() writes them in this
    // order, with their labels in declared order, and a family without children yet still
    // shows its HELP and TYPE (prometheus-cpp leaves it out).
    std::vector<std::pair<std::string, Declared>> declared_;
    std::vector<std::unique_ptr<Family<Counter>>> counters_;
    std::vector<std::unique_ptr<Family<Gauge>>> gauges_;
    std::vector<std::unique_ptr<Family<Histogram>>> histograms_;
    std::vector<Collector> collectors_;
};

// Buckets for LLM latencies in seconds, from a few milliseconds (time to first token of a
// cached prompt) to ten minutes (long generations on a CPU).
std::vector<double> llm_latency_buckets();

}  // namespace llama_pool
