#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/metrics.hpp"
#include "proxy/relay_reasons.hpp"

namespace llama_pool {

class BackendRegistry;
class Supervisor;

// What the response cache and the Idempotency-Key store hold, read at scrape time.
struct ReuseSnapshot {
    std::size_t cache_entries = 0;
    std::size_t cache_bytes = 0;
    std::uint64_t cache_evicted = 0;  // pushed out by the byte bound
    std::uint64_t cache_expired = 0;  // found past their TTL
    std::size_t idempotency_in_flight = 0;
    std::size_t idempotency_completed = 0;
    std::size_t idempotency_bytes = 0;
};

// The pool's own metrics (prefix llama_pool_), the process metrics, and every worker's
// llama.cpp metrics re-exported with a `worker` label. Request-path updates touch only
// atomics and one short per-family lookup, never a pool-wide lock. State that already lives
// elsewhere (in-flight counts, worker states, breakers, the queue) is read at scrape time
// instead of being mirrored. Thread-safe.
class PoolMetrics {
  public:
    explicit PoolMetrics(std::string version);

    // Scrape-time sources, one per model group; `supervisor` may be null (a pool of
    // unmanaged upstreams). Attach before traffic, detach (empty) before they go.
    struct GroupSource {
        std::string group;
        BackendRegistry* registry = nullptr;
        Supervisor* supervisor = nullptr;
        // The configured tenants (their names): only they get per-tenant queue series, so
        // the series stay bounded however many clients come.
        std::vector<std::string> tenants;
    };
    void attach(std::vector<GroupSource> groups);
    // Convenience for one unnamed group (tests).
    void attach(BackendRegistry* registry, Supervisor* supervisor);
    // The cache's and coalescer's state; an empty function detaches it (before its owner goes).
    void attach_reuse(std::function<ReuseSnapshot()> source);
    // Jobs per state (queued, running, succeeded...); empty function detaches.
    using JobCounts = std::vector<std::pair<std::string, std::size_t>>;
    void attach_jobs(std::function<JobCounts()> source);
    std::string render();
    // Only the series of one group's workers and requests, plus the pool-wide ones.
    std::string render_group(std::string_view group);

    // `group` is "" for routes the pool answers itself.
    void request_done(std::string_view group, std::string_view route, int status, double seconds);
    void first_byte(std::string_view group, std::string_view route, double seconds);
    void queue_wait(std::string_view group, double seconds);
    void upstream(std::string_view group, const std::string& worker, std::string_view outcome);
    void retry(std::string_view reason);
    // A worker's 500 and what asking another worker found: served_elsewhere, failed_elsewhere,
    // no_worker_free, or skipped (the body showed a request mistake); `seconds` is what the
    // second opinion added to the client's wait.
    void second_opinion(SecondOpinion result, double seconds);
    void rejected(std::string_view reason);
    void client_disconnect();
    void tokens(std::string_view group, const std::string& worker, long long predicted,
                long long prompt);
    // result: hit, miss or bypass (Cache-Control: no-cache).
    void cache_lookup(std::string_view result);
    // result: executed, attached, replayed or conflict.
    void idempotent_request(std::string_view result);

    // What one scrape saw of a group (defined in the .cpp).
    struct ScrapedGroup;

  private:
    std::vector<ScrapedGroup> scrape_groups();
    std::vector<prometheus::MetricFamily> reuse_families();

    MetricsRegistry registry_;
    Family<Counter>& requests_;
    Family<Histogram>& duration_;
    Family<Histogram>& ttfb_;
    Family<Histogram>& queue_wait_;
    Family<Counter>& upstream_;
    Family<Counter>& retries_;
    Family<Counter>& second_opinions_;
    Family<Histogram>& second_opinion_seconds_;
    Family<Counter>& rejected_;
    Family<Counter>& disconnects_;
    Family<Counter>& tokens_predicted_;
    Family<Counter>& prompt_tokens_;
    Family<Counter>& cache_lookups_;
    Family<Counter>& idempotent_;
    std::vector<GroupSource> groups_;
    std::mutex reuse_mutex_;  // the source is detached while scrapes may run
    std::function<ReuseSnapshot()> reuse_;
    std::function<JobCounts()> jobs_;  // guarded by reuse_mutex_ too: both are rarely set
};

// One worker as a scrape saw it, for the engine gauges.
struct WorkerLoad {
    int capacity = 0;  // slots it serves now (0 when not serving)
    int inflight = 0;
    std::optional<double> kv_ratio;  // what the worker reports itself, when it does
};
// The three signals the Gateway API Inference Extension's endpoint picker and autoscalers
// read (llama_pool_requests_waiting, _running, llama_pool_kv_cache_usage_ratio).
struct EngineLoad {
    double waiting = 0;
    double running = 0;
    double kv_cache_usage_ratio = 0;
};
// kv_cache_usage_ratio is the serving workers' held context over their total context. A
// worker's part of the total is its slot count (a group's workers share one context size,
// split evenly over slots). What it holds is its own llamacpp:kv_cache_usage_ratio when it
// exports one (BitNet's fork, llama.cpp before the gauge was removed), else the share of
// its slots busy with a request: upstream llama-server no longer reports KV use, and a busy
// slot is what reserves its share of the context.
EngineLoad engine_load(const std::vector<WorkerLoad>& workers, std::size_t waiting);
// A worker's llamacpp:kv_cache_usage_ratio, when its exposition has one in 0..1.
std::optional<double> reported_kv_cache_ratio(std::string_view exposition);

// Workers' own expositions (worker id, /metrics text) merged under a `worker` label, as
// /metrics re-exports them: llama.cpp's "llamacpp:" becomes "llamacpp_" (Prometheus
// reserves the colon for recording rules) and n_tokens_max, declared a counter, a gauge.
std::string merge_worker_expositions(const std::vector<std::pair<std::string, std::string>>& texts);
// The same with each worker's group as a `group` label too (none when `group` is empty).
struct WorkerExposition {
    std::string group;
    std::string worker;
    std::string text;
};
std::string merge_worker_expositions(const std::vector<WorkerExposition>& texts);

// A bounded route label: the llama-server endpoint a path names, "/pool" for the admin
// API, or "other". Client-chosen paths must never become label values.
std::string_view route_label(std::string_view path);

}  // namespace llama_pool
