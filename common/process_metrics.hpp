#pragma once

#include <string>

namespace llama_pool {

// Appends the standard Prometheus process metrics of the calling process, read from
// /proc/self, /proc/stat and getrlimit: process_cpu_seconds_total, process_resident_memory_bytes,
// process_virtual_memory_bytes, process_open_fds, process_max_fds, process_start_time_seconds
// and process_threads, each with HELP and TYPE. Fit to be a MetricsRegistry collector.
//
// A source that cannot be read (no /proc, say) leaves its metrics out instead of failing
// the scrape; what is written is always complete families.
void render_process_metrics(std::string& out);

}  // namespace llama_pool
