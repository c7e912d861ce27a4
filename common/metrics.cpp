#include "common/metrics.hpp"

#include <prometheus/check_names.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <sstream>
#include <stdexcept>

#include "common/prometheus_text.hpp"

namespace llama_pool {

namespace {

std::vector<double> checked_bounds(std::vector<double> bounds) {
    if (!bounds.empty() && bounds.back() == HUGE_VAL) {
        bounds.pop_back();
    }
    for (std::size_t i = 0; i < bounds.size(); ++i) {
        if (std::isnan(bounds[i]) || bounds[i] == HUGE_VAL) {
            throw std::invalid_argument("histogram bound must be a number below +Inf");
        }
        if (i > 0 && !(bounds[i - 1] < bounds[i])) {
            throw std::invalid_argument("histogram bounds must be strictly increasing");
        }
    }
    return bounds;
}

void check_family(const std::string& name, const std::string& help,
                  const std::vector<std::string>& label_names) {
    if (!prometheus::CheckMetricName(name)) {
        throw std::invalid_argument("invalid metric name: '" + name + "'");
    }
    // prometheus-cpp 1.0 writes HELP as given; these two would break the line.
    if (help.find_first_of("\\\n") != std::string::npos) {
        throw std::invalid_argument("metric " + name + ": help must not hold '\\' or newline");
    }
    for (std::size_t i = 0; i < label_names.size(); ++i) {
        if (!prometheus::CheckLabelName(label_names[i]) || !is_valid_label_name(label_names[i])) {
            throw std::invalid_argument("metric " + name + ": invalid label name: '" +
                                        label_names[i] + "'");
        }
        if (std::find(label_names.begin(), label_names.begin() + static_cast<std::ptrdiff_t>(i),
                      label_names[i]) != label_names.begin() + static_cast<std::ptrdiff_t>(i)) {
            throw std::invalid_argument("metric " + name + ": label '" + label_names[i] +
                                        "' given twice");
        }
    }
}

prometheus::Counter& add_child(prometheus::Family<prometheus::Counter>& family,
                               const prometheus::Labels& labels, const std::vector<double>&) {
    return family.Add(labels);
}

prometheus::Gauge& add_child(prometheus::Family<prometheus::Gauge>& family,
                             const prometheus::Labels& labels, const std::vector<double>&) {
    return family.Add(labels);
}

prometheus::Histogram& add_child(prometheus::Family<prometheus::Histogram>& family,
                                 const prometheus::Labels& labels,
                                 const std::vector<double>& bounds) {
    return family.Add(labels, bounds);
}

// prometheus-cpp keeps labels in a std::map and children in a hash map: put each series'
// labels back in the order the family declared them, and the series in the order of their
// label values, so that the exposition reads the same on every scrape.
void order_family(prometheus::MetricFamily& family, const std::vector<std::string>& order) {
    const auto rank = [&](const std::string& name) {
        return std::find(order.begin(), order.end(), name) - order.begin();
    };
    const auto key = [&](const prometheus::ClientMetric& metric) {
        std::vector<std::string> values(order.size());
        for (const auto& label : metric.label) {
            const auto at = static_cast<std::size_t>(rank(label.name));
            if (at < values.size()) {
                values[at] = label.value;
            }
        }
        return values;
    };
    for (auto& metric : family.metric) {
        std::sort(metric.label.begin(), metric.label.end(),
                  [&](const auto& a, const auto& b) { return rank(a.name) < rank(b.name); });
    }
    std::vector<std::pair<std::vector<std::string>, prometheus::ClientMetric>> keyed;
    keyed.reserve(family.metric.size());
    for (auto& metric : family.metric) {
        keyed.emplace_back(key(metric), std::move(metric));
    }
    std::sort(keyed.begin(), keyed.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    family.metric.clear();
    for (auto& [values, metric] : keyed) {
        family.metric.push_back(std::move(metric));
    }
}

}  // namespace

void Counter::inc(double v) {
    if (!(v >= 0)) {
        throw std::invalid_argument("counter increment must be >= 0");
    }
    impl_->Increment(v);
}

double Counter::value() const {
    return impl_->Value();
}

void Gauge::set(double v) {
    impl_->Set(v);
}

void Gauge::inc(double v) {
    impl_->Increment(v);
}

void Gauge::dec(double v) {
    impl_->Decrement(v);
}

double Gauge::value() const {
    return impl_->Value();
}

void Histogram::observe(double v) {
    if (std::isnan(v)) {
        // prometheus-cpp's bucket search would put NaN in the first bucket; Prometheus'
        // own clients count it in +Inf only (no bound is >= NaN). Rare enough to afford
        // collecting the child to learn its bucket count.
        std::vector<double> increments(impl_->Collect().histogram.bucket.size(), 0);
        increments.back() = 1;
        impl_->ObserveMultiple(increments, v);
        return;
    }
    impl_->Observe(v);
}

HistogramSnapshot Histogram::snapshot() const {
    const auto collected = impl_->Collect().histogram;
    HistogramSnapshot snap;
    for (const auto& bucket : collected.bucket) {
        if (bucket.upper_bound != HUGE_VAL) {
            snap.upper_bounds.push_back(bucket.upper_bound);
        }
        snap.cumulative_counts.push_back(bucket.cumulative_count);
    }
    snap.sum = collected.sample_sum;
    snap.count = collected.sample_count;
    return snap;
}

template <class Metric>
Family<Metric>::Family(Impl& impl, std::vector<std::string> label_names, std::vector<double> bounds)
    : impl_(&impl), label_names_(std::move(label_names)), bounds_(std::move(bounds)) {
    // A family without labels has its one child from the start, so it renders (as 0)
    // before its first update.
    if (label_names_.empty()) {
        get();
    }
}

template <class Metric>
Metric& Family<Metric>::labels(const std::vector<std::string>& values) {
    if (values.size() != label_names_.size()) {
        throw std::invalid_argument("metric " + impl_->GetName() + ": expected " +
                                    std::to_string(label_names_.size()) + " label values, got " +
                                    std::to_string(values.size()));
    }
    std::lock_guard lock(mutex_);
    auto it = children_.find(values);
    if (it == children_.end()) {
        prometheus::Labels labels;
        for (std::size_t i = 0; i < values.size(); ++i) {
            if (!values[i].empty()) {
                labels.emplace(label_names_[i], valid_utf8(values[i]));
            }
        }
        it = children_.emplace(values, std::make_unique<Metric>(add_child(*impl_, labels, bounds_)))
                 .first;
    }
    return *it->second;
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

CollectedFamily::CollectedFamily(std::string name, std::string help, Type type) {
    family_.name = std::move(name);
    family_.help = std::move(help);
    family_.type =
        type == Type::counter ? prometheus::MetricType::Counter : prometheus::MetricType::Gauge;
}

CollectedFamily& CollectedFamily::add(std::vector<std::pair<std::string, std::string>> labels,
                                      double value) {
    prometheus::ClientMetric metric;
    for (auto& [name, label_value] : labels) {
        if (!label_value.empty()) {
            metric.label.push_back({std::move(name), valid_utf8(label_value)});
        }
    }
    if (family_.type == prometheus::MetricType::Counter) {
        metric.counter.value = value;
    } else {
        metric.gauge.value = value;
    }
    family_.metric.push_back(std::move(metric));
    return *this;
}

MetricsRegistry::MetricsRegistry()
    : registry_(
          std::make_unique<prometheus::Registry>(prometheus::Registry::InsertBehavior::Throw)) {}

MetricsRegistry::~MetricsRegistry() = default;

void MetricsRegistry::take_names(const std::vector<std::string>& names, Declared declared) {
    for (const auto& name : names) {
        if (taken_names_.count(name) != 0) {
            throw std::invalid_argument("metric name already registered: " + name);
        }
    }
    taken_names_.insert(names.begin(), names.end());
    declared_.emplace_back(names.front(), std::move(declared));
}

Family<Counter>& MetricsRegistry::counter(const std::string& name, const std::string& help,
                                          std::vector<std::string> label_names) {
    check_family(name, help, label_names);
    std::lock_guard lock(mutex_);
    take_names({name}, {help, prometheus::MetricType::Counter, label_names});
    auto& impl = prometheus::BuildCounter().Name(name).Help(help).Register(*registry_);
    counters_.push_back(
        std::make_unique<Family<Counter>>(impl, std::move(label_names), std::vector<double>{}));
    return *counters_.back();
}

Family<Gauge>& MetricsRegistry::gauge(const std::string& name, const std::string& help,
                                      std::vector<std::string> label_names) {
    check_family(name, help, label_names);
    std::lock_guard lock(mutex_);
    take_names({name}, {help, prometheus::MetricType::Gauge, label_names});
    auto& impl = prometheus::BuildGauge().Name(name).Help(help).Register(*registry_);
    gauges_.push_back(
        std::make_unique<Family<Gauge>>(impl, std::move(label_names), std::vector<double>{}));
    return *gauges_.back();
}

Family<Histogram>& MetricsRegistry::histogram(const std::string& name, const std::string& help,
                                              std::vector<std::string> label_names,
                                              std::vector<double> upper_bounds) {
    if (std::find(label_names.begin(), label_names.end(), "le") != label_names.end()) {
        throw std::invalid_argument("histogram " + name + ": 'le' is reserved for buckets");
    }
    check_family(name, help, label_names);
    auto bounds = checked_bounds(std::move(upper_bounds));
    std::lock_guard lock(mutex_);
    take_names({name, name + "_bucket", name + "_sum", name + "_count"},
               {help, prometheus::MetricType::Histogram, label_names});
    auto& impl = prometheus::BuildHistogram().Name(name).Help(help).Register(*registry_);
    histograms_.push_back(
        std::make_unique<Family<Histogram>>(impl, std::move(label_names), std::move(bounds)));
    return *histograms_.back();
}

void MetricsRegistry::add_collector(Collector collector) {
    std::lock_guard lock(mutex_);
    collectors_.push_back(std::move(collector));
}

std::string MetricsRegistry::render(std::vector<prometheus::MetricFamily> first) const {
    std::vector<prometheus::MetricFamily> families;
    std::vector<Collector> collectors;
    {
        // Families are collected under the lock (how they were declared is read from what
        // registrations write); collectors run outside it: one that is slow (reading /proc,
        // asking workers) must not block registrations.
        std::lock_guard lock(mutex_);
        std::map<std::string, prometheus::MetricFamily> collected;
        for (auto& family : registry_->Collect()) {
            auto name = family.name;
            collected.emplace(std::move(name), std::move(family));
        }
        families.reserve(declared_.size());
        for (const auto& [name, declared] : declared_) {
            const auto it = collected.find(name);
            if (it == collected.end()) {
                families.push_back({name, declared.help, declared.type, {}});
                continue;
            }
            order_family(it->second, declared.label_names);
            families.push_back(std::move(it->second));
        }
        collectors = collectors_;
    }
    std::move(first.begin(), first.end(), std::back_inserter(families));
    for (const auto& collector : collectors) {
        try {
            auto more = collector();
            std::move(more.begin(), more.end(), std::back_inserter(families));
        } catch (const std::exception&) {
            continue;
        }
    }
    std::ostringstream stream;
    prometheus::TextSerializer().Serialize(stream, families);
    return std::move(stream).str();
}

std::vector<double> llm_latency_buckets() {
    return {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};
}

}  // namespace llama_pool
