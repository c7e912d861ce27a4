#include "common/metrics.hpp"

#include <algorithm>
#include <cmath>
#include <exception>
#include <stdexcept>
#include <utility>

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

// `name{a="x",b="y"` (the caller closes the brace, after adding `le` where needed), or just
// `name` when no label has a value. A label with an empty value is left out: Prometheus
// reads it as absent anyway, and so a label that only some series need (a model group's name
// when the pool has groups) costs the others nothing. Returns whether a brace was opened.
bool append_name_and_labels(std::string& out, std::string_view name,
                            const std::vector<std::string>& label_names,
                            const std::vector<std::string>& label_values) {
    out += name;
    bool opened = false;
    for (std::size_t i = 0; i < label_names.size(); ++i) {
        if (label_values[i].empty()) {
            continue;
        }
        out += opened ? ',' : '{';
        opened = true;
        out += label_names[i];
        out += "=\"";
        append_escaped_label_value(out, label_values[i]);
        out += '"';
    }
    return opened;
}

void append_sample(std::string& out, std::string_view name,
                   const std::vector<std::string>& label_names,
                   const std::vector<std::string>& label_values, double value) {
    if (append_name_and_labels(out, name, label_names, label_values)) {
        out += '}';
    }
    out += ' ';
    append_metric_value(out, value);
    out += '\n';
}

const char* type_name(const Counter*) {
    return "counter";
}
const char* type_name(const Gauge*) {
    return "gauge";
}
const char* type_name(const Histogram*) {
    return "histogram";
}

void append_samples(std::string& out, const std::string& name,
                    const std::vector<std::string>& label_names,
                    const std::vector<std::string>& label_values, const Counter& counter) {
    append_sample(out, name, label_names, label_values, counter.value());
}

void append_samples(std::string& out, const std::string& name,
                    const std::vector<std::string>& label_names,
                    const std::vector<std::string>& label_values, const Gauge& gauge) {
    append_sample(out, name, label_names, label_values, gauge.value());
}

void append_samples(std::string& out, const std::string& name,
                    const std::vector<std::string>& label_names,
                    const std::vector<std::string>& label_values, const Histogram& histogram) {
    const auto snap = histogram.snapshot();
    const auto bucket_name = name + "_bucket";
    for (std::size_t i = 0; i < snap.cumulative_counts.size(); ++i) {
        const bool opened = append_name_and_labels(out, bucket_name, label_names, label_values);
        out += opened ? ",le=\"" : "{le=\"";
        append_metric_value(out, i < snap.upper_bounds.size() ? snap.upper_bounds[i] : HUGE_VAL);
        out += "\"} ";
        append_metric_value(out, static_cast<double>(snap.cumulative_counts[i]));
        out += '\n';
    }
    append_sample(out, name + "_sum", label_names, label_values, snap.sum);
    append_sample(out, name + "_count", label_names, label_values, static_cast<double>(snap.count));
}

}  // namespace

void Counter::inc(double v) {
    if (!(v >= 0)) {
        throw std::invalid_argument("counter increment must be >= 0");
    }
    value_.fetch_add(v, std::memory_order_relaxed);
}

Histogram::Histogram(std::vector<double> upper_bounds)
    : upper_bounds_(checked_bounds(std::move(upper_bounds))),
      bucket_counts_(upper_bounds_.size() + 1) {}

void Histogram::observe(double v) {
    // First bound >= v, i.e. the `le` bucket; NaN compares false with everything, so it is
    // sent to +Inf explicitly.
    const auto index = std::isnan(v)
                           ? upper_bounds_.size()
                           : static_cast<std::size_t>(
                                 std::lower_bound(upper_bounds_.begin(), upper_bounds_.end(), v) -
                                 upper_bounds_.begin());
    bucket_counts_[index].fetch_add(1, std::memory_order_relaxed);
    sum_.fetch_add(v, std::memory_order_relaxed);
}

HistogramSnapshot Histogram::snapshot() const {
    HistogramSnapshot snap;
    snap.upper_bounds = upper_bounds_;
    snap.cumulative_counts.reserve(bucket_counts_.size());
    std::uint64_t running = 0;
    for (const auto& bucket : bucket_counts_) {
        running += bucket.load(std::memory_order_relaxed);
        snap.cumulative_counts.push_back(running);
    }
    // Derived from the buckets rather than counted separately, so that a scrape racing an
    // observation never shows a count that differs from the +Inf bucket.
    snap.count = running;
    snap.sum = sum_.load(std::memory_order_relaxed);
    return snap;
}

FamilyBase::FamilyBase(std::string name, std::string help, std::vector<std::string> label_names)
    : name_(std::move(name)), help_(std::move(help)), label_names_(std::move(label_names)) {
    if (!is_valid_metric_name(name_)) {
        throw std::invalid_argument("invalid metric name: '" + name_ + "'");
    }
    for (std::size_t i = 0; i < label_names_.size(); ++i) {
        if (!is_valid_label_name(label_names_[i])) {
            throw std::invalid_argument("metric " + name_ + ": invalid label name: '" +
                                        label_names_[i] + "'");
        }
        for (std::size_t j = 0; j < i; ++j) {
            if (label_names_[j] == label_names_[i]) {
                throw std::invalid_argument("metric " + name_ + ": label '" + label_names_[i] +
                                            "' given twice");
            }
        }
    }
}

template <class Metric>
Family<Metric>::Family(std::string name, std::string help, std::vector<std::string> label_names,
                       Factory make_child)
    : FamilyBase(std::move(name), std::move(help), std::move(label_names)),
      make_child_(std::move(make_child)) {
    if (this->label_names().empty()) {
        children_.emplace(std::vector<std::string>{}, make_child_());
    }
}

template <class Metric>
Metric& Family<Metric>::labels(const std::vector<std::string>& values) {
    if (values.size() != label_names().size()) {
        throw std::invalid_argument("metric " + name() + ": expected " +
                                    std::to_string(label_names().size()) + " label values, got " +
                                    std::to_string(values.size()));
    }
    std::lock_guard lock(mutex_);
    auto it = children_.find(values);
    if (it == children_.end()) {
        it = children_.emplace(values, make_child_()).first;
    }
    return *it->second;
}

template <class Metric>
void Family<Metric>::render(std::string& out) const {
    append_family_header(out, name(), help(), type_name(static_cast<const Metric*>(nullptr)));
    std::lock_guard lock(mutex_);
    for (const auto& [values, child] : children_) {
        append_samples(out, name(), label_names(), values, *child);
    }
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

template <class Metric>
Family<Metric>& MetricsRegistry::add(std::unique_ptr<Family<Metric>> family,
                                     const std::vector<std::string>& sample_names) {
    std::lock_guard lock(mutex_);
    for (const auto& name : sample_names) {
        if (taken_names_.count(name) != 0) {
            throw std::invalid_argument("metric name already registered: " + name);
        }
    }
    taken_names_.insert(sample_names.begin(), sample_names.end());
    auto& ref = *family;
    families_.push_back(std::move(family));
    return ref;
}

Family<Counter>& MetricsRegistry::counter(std::string name, std::string help,
                                          std::vector<std::string> label_names) {
    auto family =
        std::make_unique<Family<Counter>>(std::move(name), std::move(help), std::move(label_names));
    const std::vector<std::string> taken{family->name()};
    return add(std::move(family), taken);
}

Family<Gauge>& MetricsRegistry::gauge(std::string name, std::string help,
                                      std::vector<std::string> label_names) {
    auto family =
        std::make_unique<Family<Gauge>>(std::move(name), std::move(help), std::move(label_names));
    const std::vector<std::string> taken{family->name()};
    return add(std::move(family), taken);
}

Family<Histogram>& MetricsRegistry::histogram(std::string name, std::string help,
                                              std::vector<std::string> label_names,
                                              std::vector<double> upper_bounds) {
    if (std::find(label_names.begin(), label_names.end(), "le") != label_names.end()) {
        throw std::invalid_argument("histogram " + name + ": 'le' is reserved for buckets");
    }
    auto bounds = checked_bounds(std::move(upper_bounds));
    auto family = std::make_unique<Family<Histogram>>(
        std::move(name), std::move(help), std::move(label_names),
        [bounds] { return std::make_unique<Histogram>(bounds); });
    const auto& base = family->name();
    const std::vector<std::string> taken{base, base + "_bucket", base + "_sum", base + "_count"};
    return add(std::move(family), taken);
}

void MetricsRegistry::add_collector(Collector collector) {
    std::lock_guard lock(mutex_);
    collectors_.push_back(std::move(collector));
}

std::string MetricsRegistry::render() const {
    // Copied under the lock, rendered outside it: families are never removed, and a
    // collector that is slow (reading /proc, asking workers) must not block registrations.
    std::vector<const FamilyBase*> families;
    std::vector<Collector> collectors;
    {
        std::lock_guard lock(mutex_);
        families.reserve(families_.size());
        for (const auto& family : families_) {
            families.push_back(family.get());
        }
        collectors = collectors_;
    }
    std::string out;
    for (const auto* family : families) {
        family->render(out);
    }
    for (const auto& collector : collectors) {
        // Into a scratch string, so that a collector failing half-way cannot leave a torn
        // family in the exposition.
        std::string part;
        try {
            collector(part);
        } catch (const std::exception&) {
            continue;
        }
        out += part;
    }
    return out;
}

std::vector<double> llm_latency_buckets() {
    return {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};
}

}  // namespace llama_pool
