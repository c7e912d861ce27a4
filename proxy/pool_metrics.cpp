#include "proxy/pool_metrics.hpp"

#include <fmt/format.h>

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
    registry_.add_collector([this](std::string& out) { render_pool_state(out); });
    registry_.add_collector([this](std::string& out) { render_reuse_state(out); });
    registry_.add_collector(render_process_metrics);
    registry_.add_collector([this](std::string& out) { render_worker_metrics(out); });
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

std::string PoolMetrics::render() {
    return registry_.render();
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

namespace {

void sample(std::string& out, std::string_view name, std::string_view labels, double value) {
    out += name;
    if (!labels.empty()) {
        out += '{';
        out += labels;
        out += '}';
    }
    out += ' ';
    append_metric_value(out, value);
    out += '\n';
}

std::string label(std::string_view name, std::string_view value) {
    std::string out(name);
    out += "=\"";
    append_escaped_label_value(out, value);
    out += '"';
    return out;
}

}  // namespace

void PoolMetrics::render_pool_state(std::string& out) {
    if (groups_.empty()) {
        return;
    }
    struct Scraped {
        std::string group_label;
        std::vector<BackendSnapshot> backends;
        std::size_t waiting = 0;
        std::vector<WorkerStatus> workers;
    };
    std::vector<Scraped> scraped;
    for (const auto& g : groups_) {
        Scraped s;
        // Without groups the one group has no name here: its series keep the labels they
        // always had.
        s.group_label = g.group.empty() ? "" : label("group", g.group) + ",";
        s.backends = g.registry->snapshot();
        s.waiting = g.registry->waiting();
        if (g.supervisor != nullptr) {
            s.workers = g.supervisor->status();
        }
        scraped.push_back(std::move(s));
    }
    // One family at a time (the exposition format wants a family's samples together), each
    // over every group.
    auto per_backend = [&](std::string_view name, std::string_view help, std::string_view type,
                           const auto& value) {
        append_family_header(out, name, help, type);
        for (const auto& s : scraped) {
            for (const auto& b : s.backends) {
                sample(out, name, s.group_label + label("worker", b.id), value(b));
            }
        }
    };
    append_family_header(out, "llama_pool_queue_depth", "Requests waiting for a worker slot.",
                         "gauge");
    for (const auto& s : scraped) {
        std::string labels = s.group_label;
        if (!labels.empty()) {
            labels.pop_back();  // the trailing comma
        }
        sample(out, "llama_pool_queue_depth", labels, static_cast<double>(s.waiting));
    }
    per_backend("llama_pool_inflight_requests", "Requests in flight on each worker.", "gauge",
                [](const BackendSnapshot& b) { return static_cast<double>(b.inflight); });
    per_backend("llama_pool_worker_capacity",
                "Concurrent requests each worker can serve (its slots).", "gauge",
                [](const BackendSnapshot& b) { return static_cast<double>(b.serving_slots()); });
    per_backend("llama_pool_breaker_state",
                "Circuit breaker per worker: 0 closed, 1 half-open, 2 open.", "gauge",
                [](const BackendSnapshot& b) {
                    return b.breaker == BreakerState::closed      ? 0.0
                           : b.breaker == BreakerState::half_open ? 1.0
                                                                  : 2.0;
                });
    per_backend("llama_pool_upstream_connections_opened_total",
                "Connections the pool opened to each worker.", "counter",
                [](const BackendSnapshot& b) { return static_cast<double>(b.connections_opened); });
    append_family_header(out, "llama_pool_worker_state",
                         "1 for each worker's current lifecycle state, 0 for the others.", "gauge");
    for (const auto& s : scraped) {
        for (const auto& w : s.workers) {
            for (const auto state : all_worker_states) {
                sample(
                    out, "llama_pool_worker_state",
                    s.group_label + label("worker", w.id) + "," + label("state", to_string(state)),
                    w.state == state ? 1 : 0);
            }
        }
    }
    append_family_header(out, "llama_pool_worker_restarts_total",
                         "Worker failures that led to a restart (or gave up), by reason.",
                         "counter");
    for (const auto& s : scraped) {
        for (const auto& w : s.workers) {
            for (const auto& [reason, n] : w.failures_by_reason) {
                sample(out, "llama_pool_worker_restarts_total",
                       s.group_label + label("worker", w.id) + "," +
                           label("reason", to_string(reason)),
                       n);
            }
        }
    }
}

void PoolMetrics::render_reuse_state(std::string& out) {
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
    if (!jobs.empty()) {
        append_family_header(out, "llama_pool_jobs",
                             "Background jobs (POST /v1/jobs) kept by the pool, by state.",
                             "gauge");
        for (const auto& [state, count] : jobs) {
            sample(out, "llama_pool_jobs", label("state", state), static_cast<double>(count));
        }
    }
    append_family_header(out, "llama_pool_cache_entries", "Replies held by the response cache.",
                         "gauge");
    sample(out, "llama_pool_cache_entries", "", static_cast<double>(s.cache_entries));
    append_family_header(out, "llama_pool_cache_bytes",
                         "Memory held by the response cache (keys and replies).", "gauge");
    sample(out, "llama_pool_cache_bytes", "", static_cast<double>(s.cache_bytes));
    append_family_header(out, "llama_pool_cache_evictions_total",
                         "Cached replies dropped: capacity (least recently used, for room) or "
                         "expired (past the TTL).",
                         "counter");
    sample(out, "llama_pool_cache_evictions_total", label("reason", "capacity"),
           static_cast<double>(s.cache_evicted));
    sample(out, "llama_pool_cache_evictions_total", label("reason", "expired"),
           static_cast<double>(s.cache_expired));
    append_family_header(out, "llama_pool_idempotency_keys",
                         "Idempotency-Keys tracked: in flight, or completed and replayable.",
                         "gauge");
    sample(out, "llama_pool_idempotency_keys", label("state", "in_flight"),
           static_cast<double>(s.idempotency_in_flight));
    sample(out, "llama_pool_idempotency_keys", label("state", "completed"),
           static_cast<double>(s.idempotency_completed));
    append_family_header(out, "llama_pool_idempotency_bytes",
                         "Memory held by replies kept for Idempotency-Key replays.", "gauge");
    sample(out, "llama_pool_idempotency_bytes", "", static_cast<double>(s.idempotency_bytes));
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

void PoolMetrics::render_worker_metrics(std::string& out) {
    std::vector<WorkerExposition> texts;
    for (const auto& g : groups_) {
        for (const auto& b : g.registry->snapshot()) {
            if (!b.available) {
                continue;
            }
            Headers headers;
            if (!b.api_key.empty()) {
                headers.add("Authorization", "Bearer " + b.api_key);
            }
            const auto r = http_fetch(b.host, b.port, "GET", "/metrics", headers, {},
                                      milliseconds(2000), 4 << 20);
            if (r.status == 200) {
                texts.push_back({g.group, b.id, r.body});
            }
        }
    }
    out += merge_worker_expositions(texts);
}

}  // namespace llama_pool
