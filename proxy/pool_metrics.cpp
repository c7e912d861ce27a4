#include "proxy/pool_metrics.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>

#include "common/http_client.hpp"
#include "common/process_metrics.hpp"
#include "common/prometheus_text.hpp"
#include "proxy/backend_registry.hpp"
#include "supervisor/supervisor.hpp"

namespace llama_pool {

std::string_view route_label(std::string_view path) {
    static constexpr std::array<std::string_view, 22> known = {"/completion",
                                                               "/completions",
                                                               "/v1/completions",
                                                               "/v1/chat/completions",
                                                               "/chat/completions",
                                                               "/v1/embeddings",
                                                               "/embedding",
                                                               "/embeddings",
                                                               "/tokenize",
                                                               "/detokenize",
                                                               "/infill",
                                                               "/rerank",
                                                               "/v1/rerank",
                                                               "/reranking",
                                                               "/apply-template",
                                                               "/props",
                                                               "/v1/models",
                                                               "/models",
                                                               "/slots",
                                                               "/health",
                                                               "/metrics",
                                                               "/"};
    for (const auto k : known) {
        if (path == k) {
            return k;
        }
    }
    if (path == "/pool" || path.rfind("/pool/", 0) == 0) {
        return "/pool";
    }
    if (path == "/v1/summarize") {
        return "/v1/summarize";
    }
    if (path == "/v1/jobs" || path.rfind("/v1/jobs/", 0) == 0) {
        return "/v1/jobs";
    }
    return "other";
}

PoolMetrics::PoolMetrics(std::string version)
    : requests_(registry_.counter("llama_pool_requests_total",
                                  "Client requests answered, by group, route and HTTP status.",
                                  {"group", "route", "code"})),
      duration_(registry_.histogram("llama_pool_request_duration_seconds",
                                    "Time from request to the end of the response.",
                                    {"group", "route"}, llm_latency_buckets())),
      ttfb_(registry_.histogram("llama_pool_time_to_first_byte_seconds",
                                "Time from request to the first response byte sent.",
                                {"group", "route"}, llm_latency_buckets())),
      queue_wait_(registry_.histogram("llama_pool_queue_wait_seconds",
                                      "Time requests waited for a worker slot.", {"group"},
                                      llm_latency_buckets())),
      upstream_(registry_.counter("llama_pool_upstream_requests_total",
                                  "Attempts sent to workers, by outcome.",
                                  {"group", "worker", "outcome"})),
      retries_(registry_.counter("llama_pool_retries_total", "Retries, by reason.", {"reason"})),
      second_opinions_(registry_.counter(
          "llama_pool_second_opinions_total",
          "Worker 500s and what another worker made of the request, by result.", {"result"})),
      second_opinion_seconds_(
          registry_.histogram("llama_pool_second_opinion_seconds",
                              "Time a second opinion on a worker 500 added to the client's wait.",
                              {}, llm_latency_buckets())),
      rejected_(registry_.counter("llama_pool_rejected_total",
                                  "Requests the pool refused itself, by reason.", {"reason"})),
      disconnects_(registry_.counter("llama_pool_client_disconnects_total",
                                     "Clients that went away before their response ended.")),
      tokens_predicted_(registry_.counter("llama_pool_tokens_predicted_total",
                                          "Tokens generated, read from the workers' replies.",
                                          {"group", "worker"})),
      prompt_tokens_(registry_.counter("llama_pool_prompt_tokens_total",
                                       "Prompt tokens evaluated, read from the workers' replies.",
                                       {"group", "worker"})),
      cache_lookups_(registry_.counter(
          "llama_pool_cache_lookups_total",
          "Response cache lookups of cacheable requests: hit, miss, or bypass (no-cache).",
          {"result"})),
      idempotent_(registry_.counter("llama_pool_idempotent_requests_total",
                                    "Requests with an Idempotency-Key: executed, attached to "
                                    "one in flight, replayed, or refused as a conflict.",
                                    {"result"})) {
    // Every result from the start, so ratios and dashboards have series before the first use.
    for (const auto* result : {"hit", "miss", "bypass"}) {
        cache_lookups_.labels({result});
    }
    for (const auto* result : {"executed", "attached", "replayed", "conflict"}) {
        idempotent_.labels({result});
    }
    registry_.gauge("llama_pool_build_info", "Always 1; the version is a label.", {"version"})
        .labels({version})
        .set(1);
    registry_.add_collector([this] { return reuse_families(); });
    registry_.add_collector(collect_process_metrics);
}

void PoolMetrics::attach(std::vector<GroupSource> groups) {
    groups_ = std::move(groups);
}

void PoolMetrics::attach(BackendRegistry* registry, Supervisor* supervisor) {
    attach({GroupSource{"", registry, supervisor}});
}

void PoolMetrics::attach_reuse(std::function<ReuseSnapshot()> source) {
    std::lock_guard lock(reuse_mutex_);
    reuse_ = std::move(source);
}

void PoolMetrics::attach_jobs(std::function<JobCounts()> source) {
    std::lock_guard lock(reuse_mutex_);
    jobs_ = std::move(source);
}

std::string PoolMetrics::render_group(std::string_view group) {
    // The whole exposition, less the samples labelled with another group. Samples without a
    // group label (process, cache, jobs) are pool-wide and stay.
    const auto all = render();
    std::string wanted = "group=\"";
    append_escaped_label_value(wanted, group);
    wanted += '"';
    std::string out;
    std::string_view rest = all;
    while (!rest.empty()) {
        const auto nl = rest.find('\n');
        const auto line = rest.substr(0, nl == std::string_view::npos ? rest.size() : nl + 1);
        rest.remove_prefix(line.size());
        const auto brace = line.find('{');
        const auto labels = brace == std::string_view::npos || line.front() == '#'
                                ? std::string_view{}
                                : line.substr(brace);
        const auto at = labels.find("group=\"");
        // A label list starts with '{' or follows a comma: "exported_group" is not ours.
        const bool has_group =
            at != std::string_view::npos && (labels[at - 1] == '{' || labels[at - 1] == ',');
        if (!has_group || labels.substr(at, wanted.size()) == wanted) {
            out += line;
        }
    }
    return out;
}

void PoolMetrics::request_done(std::string_view group, std::string_view route, int status,
                               double seconds) {
    requests_.labels({std::string(group), std::string(route), std::to_string(status)}).inc();
    duration_.labels({std::string(group), std::string(route)}).observe(seconds);
}

void PoolMetrics::first_byte(std::string_view group, std::string_view route, double seconds) {
    ttfb_.labels({std::string(group), std::string(route)}).observe(seconds);
}

void PoolMetrics::queue_wait(std::string_view group, double seconds) {
    queue_wait_.labels({std::string(group)}).observe(seconds);
}

void PoolMetrics::upstream(std::string_view group, const std::string& worker,
                           std::string_view outcome) {
    upstream_.labels({std::string(group), worker, std::string(outcome)}).inc();
}

void PoolMetrics::retry(std::string_view reason) {
    retries_.labels({std::string(reason)}).inc();
}

void PoolMetrics::second_opinion(SecondOpinion result, double seconds) {
    second_opinions_.labels({std::string(to_string(result))}).inc();
    if (result != SecondOpinion::skipped) {
        second_opinion_seconds_.get().observe(seconds);
    }
}

void PoolMetrics::rejected(std::string_view reason) {
    rejected_.labels({std::string(reason)}).inc();
}

void PoolMetrics::client_disconnect() {
    disconnects_.get().inc();
}

void PoolMetrics::tokens(std::string_view group, const std::string& worker, long long predicted,
                         long long prompt) {
    tokens_predicted_.labels({std::string(group), worker}).inc(static_cast<double>(predicted));
    prompt_tokens_.labels({std::string(group), worker}).inc(static_cast<double>(prompt));
}

void PoolMetrics::cache_lookup(std::string_view result) {
    cache_lookups_.labels({std::string(result)}).inc();
}

void PoolMetrics::idempotent_request(std::string_view result) {
    idempotent_.labels({std::string(result)}).inc();
}

// Its queue, its workers' snapshots and (for those serving) their own /metrics text.
struct PoolMetrics::ScrapedGroup {
    struct Worker {
        BackendSnapshot backend;
        std::optional<std::string> exposition;
    };
    std::string group;
    std::size_t waiting = 0;
    std::vector<Worker> workers;
    std::vector<WorkerStatus> statuses;
    std::vector<std::string> configured_tenants;
    std::vector<FairQueue::TenantStats> tenants;
};

std::optional<double> reported_kv_cache_ratio(std::string_view exposition) {
    // A cheap look before the parse: most workers (upstream llama.cpp) do not export it.
    if (exposition.find("kv_cache_usage_ratio") == std::string_view::npos) {
        return std::nullopt;
    }
    for (const auto& family : parse_exposition(exposition)) {
        if (family.name == "llamacpp:kv_cache_usage_ratio" && !family.samples.empty()) {
            const double v = family.samples.front().value;
            if (v >= 0 && v <= 1) {
                return v;
            }
        }
    }
    return std::nullopt;
}

EngineLoad engine_load(const std::vector<WorkerLoad>& workers, std::size_t waiting) {
    EngineLoad load;
    load.waiting = static_cast<double>(waiting);
    double held = 0;
    double total = 0;
    for (const auto& w : workers) {
        load.running += w.inflight;
        if (w.capacity <= 0) {
            continue;  // not serving: its context is not the pool's to fill
        }
        // Workers of a group share one context size, split evenly over their slots, so a
        // worker's share of the total is its slot count.
        const double ratio =
            w.kv_ratio ? *w.kv_ratio : std::min(1.0, static_cast<double>(w.inflight) / w.capacity);
        held += ratio * w.capacity;
        total += w.capacity;
    }
    load.kv_cache_usage_ratio = total > 0 ? held / total : 0;
    return load;
}

std::vector<PoolMetrics::ScrapedGroup> PoolMetrics::scrape_groups() {
    std::vector<ScrapedGroup> scraped;
    for (const auto& g : groups_) {
        ScrapedGroup s;
        s.group = g.group;
        s.waiting = g.registry->waiting();
        s.configured_tenants = g.tenants;
        if (!g.tenants.empty()) {
            s.tenants = g.registry->queue_by_tenant();
        }
        if (g.supervisor != nullptr) {
            s.statuses = g.supervisor->status();
        }
        for (auto& b : g.registry->snapshot()) {
            ScrapedGroup::Worker w;
            if (b.available) {
                Headers headers;
                if (!b.api_key.empty()) {
                    headers.add("Authorization", "Bearer " + b.api_key);
                }
                const auto r = http_fetch(b.host, b.port, "GET", "/metrics", headers, {},
                                          milliseconds(2000), 4 << 20);
                if (r.status == 200) {
                    w.exposition = r.body;
                }
            }
            w.backend = std::move(b);
            s.workers.push_back(std::move(w));
        }
        scraped.push_back(std::move(s));
    }
    return scraped;
}

namespace {

// The three gauges the Gateway API Inference Extension's endpoint picker (llm-d's router)
// and autoscalers read: pool-wide without a group label, and per named group.
void add_engine_families(const std::vector<PoolMetrics::ScrapedGroup>& scraped,
                         std::vector<prometheus::MetricFamily>& out) {
    CollectedFamily waiting("llama_pool_requests_waiting",
                            "Requests waiting in the pool's queue for a worker slot.",
                            CollectedFamily::Type::gauge);
    CollectedFamily running("llama_pool_requests_running", "Requests in flight on workers.",
                            CollectedFamily::Type::gauge);
    CollectedFamily kv(
        "llama_pool_kv_cache_usage_ratio",
        "Share (0..1) of the workers' context held by their slots, as of this scrape.",
        CollectedFamily::Type::gauge);
    std::vector<WorkerLoad> all;
    std::size_t all_waiting = 0;
    for (const auto& s : scraped) {
        std::vector<WorkerLoad> loads;
        for (const auto& w : s.workers) {
            loads.push_back({w.backend.serving_slots(), w.backend.inflight,
                             w.exposition ? reported_kv_cache_ratio(*w.exposition) : std::nullopt});
        }
        all.insert(all.end(), loads.begin(), loads.end());
        all_waiting += s.waiting;
        if (s.group.empty()) {
            continue;  // the implicit single group is the pool-wide series
        }
        const auto load = engine_load(loads, s.waiting);
        waiting.add({{"group", s.group}}, load.waiting);
        running.add({{"group", s.group}}, load.running);
        kv.add({{"group", s.group}}, load.kv_cache_usage_ratio);
    }
    const auto load = engine_load(all, all_waiting);
    waiting.add({}, load.waiting);
    running.add({}, load.running);
    kv.add({}, load.kv_cache_usage_ratio);
    out.push_back(waiting.take());
    out.push_back(running.take());
    out.push_back(kv.take());
}

// Per configured tenant and group: requests waiting and running. Unconfigured tenants (one
// per client address or key) are left out: their number has no bound.
void add_tenant_families(const std::vector<PoolMetrics::ScrapedGroup>& scraped,
                         std::vector<prometheus::MetricFamily>& out) {
    CollectedFamily waiting("llama_pool_tenant_requests_waiting",
                            "Requests of each configured tenant waiting for a worker slot.",
                            CollectedFamily::Type::gauge);
    CollectedFamily running("llama_pool_tenant_requests_running",
                            "Requests of each configured tenant on workers.",
                            CollectedFamily::Type::gauge);
    bool any = false;
    for (const auto& s : scraped) {
        for (const auto& name : s.configured_tenants) {
            any = true;
            double w = 0;
            double r = 0;
            for (const auto& t : s.tenants) {
                if (t.label == name) {
                    w = static_cast<double>(t.waiting);
                    r = t.running;
                }
            }
            waiting.add({{"group", s.group}, {"tenant", name}}, w);
            running.add({{"group", s.group}, {"tenant", name}}, r);
        }
    }
    if (any) {
        out.push_back(waiting.take());
        out.push_back(running.take());
    }
}

std::vector<prometheus::MetricFamily> pool_state_families(
    const std::vector<PoolMetrics::ScrapedGroup>& scraped) {
    std::vector<prometheus::MetricFamily> out;
    if (scraped.empty()) {
        return out;
    }
    add_engine_families(scraped, out);
    // One family at a time (the exposition format wants a family's samples together), each
    // over every group. Without groups the one group has no name: its empty label is left
    // out, so its series keep the labels they always had.
    CollectedFamily queue("llama_pool_queue_depth", "Requests waiting for a worker slot.",
                          CollectedFamily::Type::gauge);
    for (const auto& s : scraped) {
        queue.add({{"group", s.group}}, static_cast<double>(s.waiting));
    }
    out.push_back(queue.take());
    add_tenant_families(scraped, out);
    auto per_backend = [&](std::string name, std::string help, CollectedFamily::Type type,
                           const auto& value) {
        CollectedFamily family(std::move(name), std::move(help), type);
        for (const auto& s : scraped) {
            for (const auto& w : s.workers) {
                family.add({{"group", s.group}, {"worker", w.backend.id}}, value(w.backend));
            }
        }
        out.push_back(family.take());
    };
    per_backend("llama_pool_inflight_requests", "Requests in flight on each worker.",
                CollectedFamily::Type::gauge,
                [](const BackendSnapshot& b) { return static_cast<double>(b.inflight); });
    per_backend("llama_pool_worker_capacity",
                "Concurrent requests each worker can serve (its slots).",
                CollectedFamily::Type::gauge,
                [](const BackendSnapshot& b) { return static_cast<double>(b.serving_slots()); });
    per_backend("llama_pool_breaker_state",
                "Circuit breaker per worker: 0 closed, 1 half-open, 2 open.",
                CollectedFamily::Type::gauge, [](const BackendSnapshot& b) {
                    return b.breaker == BreakerState::closed      ? 0.0
                           : b.breaker == BreakerState::half_open ? 1.0
                                                                  : 2.0;
                });
    per_backend("llama_pool_upstream_connections_opened_total",
                "Connections the pool opened to each worker.", CollectedFamily::Type::counter,
                [](const BackendSnapshot& b) { return static_cast<double>(b.connections_opened); });
    CollectedFamily states("llama_pool_worker_state",
                           "1 for each worker's current lifecycle state, 0 for the others.",
                           CollectedFamily::Type::gauge);
    CollectedFamily restarts("llama_pool_worker_restarts_total",
                             "Worker failures that led to a restart (or gave up), by reason.",
                             CollectedFamily::Type::counter);
    for (const auto& s : scraped) {
        for (const auto& w : s.statuses) {
            for (const auto state : all_worker_states) {
                states.add({{"group", s.group},
                            {"worker", w.id},
                            {"state", std::string(to_string(state))}},
                           w.state == state ? 1 : 0);
            }
            for (const auto& [reason, n] : w.failures_by_reason) {
                restarts.add({{"group", s.group},
                              {"worker", w.id},
                              {"reason", std::string(to_string(reason))}},
                             n);
            }
        }
    }
    out.push_back(states.take());
    out.push_back(restarts.take());
    return out;
}

}  // namespace

std::vector<prometheus::MetricFamily> PoolMetrics::reuse_families() {
    ReuseSnapshot s;
    JobCounts jobs;
    {
        std::lock_guard lock(reuse_mutex_);
        if (reuse_) {
            s = reuse_();
        }
        if (jobs_) {
            jobs = jobs_();
        }
    }
    std::vector<prometheus::MetricFamily> out;
    if (!jobs.empty()) {
        CollectedFamily family("llama_pool_jobs",
                               "Background jobs (POST /v1/jobs) kept by the pool, by state.",
                               CollectedFamily::Type::gauge);
        for (const auto& [state, count] : jobs) {
            family.add({{"state", state}}, static_cast<double>(count));
        }
        out.push_back(family.take());
    }
    const auto d = [](auto v) { return static_cast<double>(v); };
    out.push_back(CollectedFamily("llama_pool_cache_entries", "Replies held by the response cache.",
                                  CollectedFamily::Type::gauge)
                      .add({}, d(s.cache_entries))
                      .take());
    out.push_back(CollectedFamily("llama_pool_cache_bytes",
                                  "Memory held by the response cache (keys and replies).",
                                  CollectedFamily::Type::gauge)
                      .add({}, d(s.cache_bytes))
                      .take());
    out.push_back(
        CollectedFamily("llama_pool_cache_evictions_total",
                        "Cached replies dropped: capacity (least recently used, for room) or "
                        "expired (past the TTL).",
                        CollectedFamily::Type::counter)
            .add({{"reason", "capacity"}}, d(s.cache_evicted))
            .add({{"reason", "expired"}}, d(s.cache_expired))
            .take());
    out.push_back(
        CollectedFamily("llama_pool_idempotency_keys",
                        "Idempotency-Keys tracked: in flight, or completed and replayable.",
                        CollectedFamily::Type::gauge)
            .add({{"state", "in_flight"}}, d(s.idempotency_in_flight))
            .add({{"state", "completed"}}, d(s.idempotency_completed))
            .take());
    out.push_back(CollectedFamily("llama_pool_idempotency_bytes",
                                  "Memory held by replies kept for Idempotency-Key replays.",
                                  CollectedFamily::Type::gauge)
                      .add({}, d(s.idempotency_bytes))
                      .take());
    return out;
}

std::string merge_worker_expositions(
    const std::vector<std::pair<std::string, std::string>>& texts) {
    std::vector<WorkerExposition> plain;
    for (const auto& [worker, text] : texts) {
        plain.push_back({"", worker, text});
    }
    return merge_worker_expositions(plain);
}

std::string merge_worker_expositions(const std::vector<WorkerExposition>& texts) {
    ExpositionMerger merger("worker", [](std::string_view name) {
        std::string renamed(name);
        for (auto& c : renamed) {
            if (c == ':') {
                c = '_';
            }
        }
        return renamed;
    });
    for (const auto& t : texts) {
        if (t.group.empty()) {
            merger.add(t.worker, t.text);
        } else {
            merger.add(t.worker, t.text, {{"group", t.group}});
        }
    }
    std::string merged;
    merger.append_to(merged);
    // llama.cpp declares n_tokens_max, a high-water mark, as a counter (without _total);
    // it is a gauge in meaning, and re-exporting it as one keeps promtool's lint clean.
    constexpr std::string_view wrong = "# TYPE llamacpp_n_tokens_max counter\n";
    if (const auto at = merged.find(wrong); at != std::string::npos) {
        merged.replace(at, wrong.size(), "# TYPE llamacpp_n_tokens_max gauge\n");
    }
    return merged;
}

std::string PoolMetrics::render() {
    // One pass over the groups feeds both the pool's state families and the workers' merged
    // expositions, so the engine gauges and the llamacpp_ series describe the same moment.
    auto scraped = scrape_groups();
    auto out = registry_.render(pool_state_families(scraped));
    std::vector<WorkerExposition> texts;
    for (auto& group : scraped) {
        for (auto& worker : group.workers) {
            if (worker.exposition) {
                texts.push_back({group.group, worker.backend.id, std::move(*worker.exposition)});
            }
        }
    }
    out += merge_worker_expositions(texts);
    return out;
}

}  // namespace llama_pool
