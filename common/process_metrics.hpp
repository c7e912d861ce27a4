#pragma once

#include <prometheus/metric_family.h>

#include <vector>

namespace llama_pool {

// The standard Prometheus process metrics of the calling process, read from
// /proc/self, /proc/stat and getrlimit: process_cpu_seconds_total, process_resident_memory_bytes,
// process_virtual_memory_bytes, process_open_fds, process_max_fds, process_start_time_seconds
// and process_threads, each with HELP. Fit to be a MetricsRegistry collector.
//
// A source that cannot be read (no /proc, say) leaves its metrics out instead of failing
// the scrape; what is written is always complete families.
std::vector<prometheus::MetricFamily> collect_process_metrics();

}  // namespace llama_pool
