#include "workloads/workload_routes.hpp"

#include <fmt/format.h>

#include <chrono>
#include <filesystem>

#include "common/error_body.hpp"
#include "proxy/buffered_exchange.hpp"
#include "proxy/pool_routes.hpp"

namespace llama_pool {

namespace {

using nlohmann::json;

constexpr const char* kComponent = "workloads";

std::int64_t unix_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

SummarizeDefaults defaults_from(const PoolConfig& config) {
    SummarizeDefaults d;
    d.max_chunk_chars = static_cast<std::size_t>(config.summarize_max_chunk_chars);
    d.overlap = static_cast<std::size_t>(config.summarize_overlap);
    d.levels = config.summarize_levels;
    d.max_text_chars = static_cast<std::size_t>(config.summarize_max_text_chars);
    d.map_prompt = config.summarize_map_prompt;
    d.reduce_prompt = config.summarize_reduce_prompt;
    return d;
}

JobStoreOptions store_options(const PoolConfig& config) {
    JobStoreOptions o;
    o.max_jobs = static_cast<std::size_t>(config.jobs_max);
    o.max_age = config.jobs_max_age;
    if (!config.jobs_data_dir.empty()) {
        o.dir = (std::filesystem::path(config.jobs_data_dir) / "jobs").string();
    }
    return o;
}

void respond_error(Exchange& exchange, int status, const std::string& message,
                   const std::string& request_id) {
    respond_json(exchange, status, make_error_body(status, message), request_id);
}

void method_not_allowed(Exchange& exchange, const char* allow, const std::string& request_id) {
    Headers headers;
    headers.add("Content-Type", "application/json; charset=utf-8");
    headers.add("X-Request-Id", request_id);
    headers.add("Allow", allow);
    exchange.respond(405, std::move(headers),
                     make_error_body(405, fmt::format("method not allowed; use {}", allow)));
}

}  // namespace

int slot_context_from_props(const std::string& props_body) {
    const auto doc = json::parse(props_body, nullptr, false);
    if (!doc.is_object()) {
        return 0;
    }
    // Both dialects put it in default_generation_settings; some builds also at the top.
    const auto settings = doc.find("default_generation_settings");
    if (settings != doc.end() && settings->is_object()) {
        const auto n = settings->find("n_ctx");
        if (n != settings->end() && n->is_number_integer()) {
            return n->get<int>();
        }
    }
    const auto n = doc.find("n_ctx");
    return n != doc.end() && n->is_number_integer() ? n->get<int>() : 0;
}

json summary_reply(const SummaryResult& result) {
    json levels = json::array();
    for (const auto& l : result.levels) {
        levels.push_back({{"level", l.level},
                          {"chunks", l.chunks},
                          {"input_chars", l.input_chars},
                          {"output_chars", l.output_chars},
                          {"ms", static_cast<long long>(l.seconds * 1000)}});
    }
    return {{"object", "summary"},
            {"summary", result.summary},
            {"converged", result.converged},
            {"levels", levels},
            {"completions", result.completions},
            {"retries", result.retries},
            {"split_chunks", result.splits},
            {"tokens_predicted", result.tokens_predicted},
            {"timings", {{"total_ms", static_cast<long long>(result.seconds * 1000)}}}};
}

WorkloadRoutes::WorkloadRoutes(const PoolConfig& config, GroupSet& groups, Logger& log)
    : config_(config),
      groups_(groups),
      log_(log),
      defaults_(defaults_from(config)),
      store_(store_options(config), unix_ms, log),
      runner_(
          store_,
          [this](const SummarizeRequest& request, const std::string& id, CancelToken& cancel,
                 const Summarizer::ProgressFn& progress, const ChunkMemo& memo) {
              return run(request, id, cancel, {}, {}, "llama-pool-job", progress, &memo);
          },
          summary_reply, config.jobs_concurrency) {}

void WorkloadRoutes::start() {
    const auto loaded = store_.load();
    if (loaded > 0) {
        log_.info(kComponent, "jobs_loaded",
                  {{"jobs", loaded}, {"dir", store_options(config_).dir}});
    }
    for (auto& job : store_.take_resumable()) {
        SummarizeRequest request;
        std::string error;
        if (!request_from_json(job.request, request, error)) {
            store_.finish(job.id, JobState::interrupted, {}, 503,
                          fmt::format("the pool stopped while this job was queued or running "
                                      "and it cannot be resumed: {}; submit it again",
                                      error));
            log_.warn(kComponent, "job_not_resumed", {{"job", job.id}, {"reason", error}});
            continue;
        }
        log_.info(kComponent, "job_resumed",
                  {{"job", job.id}, {"reused_chunks", job.saved.size()}});
        runner_.resume(job.id, std::move(request), std::move(job.saved));
    }
}

SummaryResult WorkloadRoutes::run(const SummarizeRequest& request, const std::string& request_id,
                                  CancelToken& cancel, IoWatch parent,
                                  std::function<bool()> parent_gone, const std::string& remote,
                                  const Summarizer::ProgressFn& progress, const ChunkMemo* memo) {
    const auto model = request.sampling.value("model", std::string());
    auto& group = groups_.route_model(model, "/completion");
    const auto worker_call = [&](const char* method, const std::string& target,
                                 const std::string& body, const std::string& call_id,
                                 const std::set<std::string>& avoid) {
        HttpRequest http;
        http.method = method;
        http.target = target;
        if (!body.empty()) {
            http.headers.add("Content-Type", "application/json");
        }
        http.body = body;
        IoWatch watch = parent;
        watch.cancel_fd = cancel.fd();
        BufferedExchange exchange(std::move(http), remote, watch, [&] {
            return cancel.cancelled() || (parent_gone && parent_gone());
        });
        const auto outcome = group.relay().forward(exchange, target, call_id, avoid);
        CompletionReply reply;
        reply.worker = outcome.worker;
        if (exchange.complete()) {
            reply.status = exchange.response_status();
            reply.body = exchange.response_body();
        }
        return reply;
    };
    const auto call = [&](const std::string& body, const std::string& chunk_id,
                          const std::set<std::string>& avoid) {
        return worker_call("POST", "/completion", body, chunk_id, avoid);
    };
    // What fits a slot, from the workers: their n_ctx (the pool starts every worker alike)
    // and their own tokenizer.
    ContextProbe context;
    context.slot_context = [&] {
        const auto reply = worker_call("GET", "/props", {}, request_id + "-props", {});
        return reply.status == 200 ? slot_context_from_props(reply.body) : 0;
    };
    context.count_tokens = [&](const std::string& prompt) -> std::optional<int> {
        const auto reply = worker_call("POST", "/tokenize", json{{"content", prompt}}.dump(),
                                       request_id + "-tokenize", {});
        const auto doc = json::parse(reply.body, nullptr, false);
        if (reply.status != 200 || !doc.is_object() || !doc.contains("tokens") ||
            !doc["tokens"].is_array()) {
            return std::nullopt;
        }
        return static_cast<int>(doc["tokens"].size());
    };
    const Summarizer summarizer(
        call, [&group] { return group.registry().total_capacity(); }, config_.retry_attempts, time_,
        std::move(context));
    log_.info(kComponent, "summarize_started",
              {{"request_id", request_id},
               {"group", group.name()},
               {"chars", count_chars(request.text)},
               {"max_chunk_chars", request.chunking.max_chars},
               {"overlap", request.chunking.overlap}});
    auto result = summarizer.run(request, request_id, cancel, progress, memo);
    log_.log(result.ok ? LogLevel::info : LogLevel::warn, kComponent, "summarize_finished",
             {{"request_id", request_id},
              {"ok", result.ok},
              {"levels", result.levels.size()},
              {"completions", result.completions},
              {"reused_chunks", result.reused},
              {"retries", result.retries},
              {"split_chunks", result.splits},
              {"duration_ms", static_cast<long long>(result.seconds * 1000)},
              {"error", result.error}});
    return result;
}

bool WorkloadRoutes::parse_body(Exchange& exchange, bool job, SummarizeRequest& out,
                                const std::string& request_id) {
    const auto body = json::parse(exchange.request().body, nullptr, false);
    if (body.is_discarded()) {
        respond_error(exchange, 400, "the body is not valid JSON (UTF-8 encoded)", request_id);
        return false;
    }
    std::string error;
    if (!parse_summarize_request(body, defaults_, job, out, error)) {
        respond_error(exchange, 400, error, request_id);
        return false;
    }
    return true;
}

bool WorkloadRoutes::handle(Exchange& exchange, const std::string& path,
                            const std::string& request_id) {
    const auto& method = exchange.request().method;
    if (path == "/v1/summarize") {
        if (method != "POST") {
            method_not_allowed(exchange, "POST", request_id);
        } else {
            summarize(exchange, request_id);
        }
        return true;
    }
    if (path == "/v1/jobs") {
        if (method == "POST") {
            submit_job(exchange, request_id);
        } else if (method == "GET") {
            list_jobs(exchange, request_id);
        } else {
            method_not_allowed(exchange, "GET, POST", request_id);
        }
        return true;
    }
    if (path.rfind("/v1/jobs/", 0) == 0) {
        job(exchange, path.substr(9), request_id);
        return true;
    }
    return false;
}

void WorkloadRoutes::summarize(Exchange& exchange, const std::string& request_id) {
    SummarizeRequest request;
    if (!parse_body(exchange, false, request, request_id)) {
        return;
    }
    CancelToken cancel;
    const auto result = run(request, request_id, cancel, exchange.watch(),
                            [&] { return exchange.client_gone(); }, exchange.remote_address(), {});
    if (!result.ok) {
        respond_error(exchange, result.status == 499 ? 503 : result.status, result.error,
                      request_id);
        return;
    }
    respond_json(exchange, 200,
                 summary_reply(result).dump(-1, ' ', false, json::error_handler_t::replace),
                 request_id);
}

void WorkloadRoutes::submit_job(Exchange& exchange, const std::string& request_id) {
    SummarizeRequest request;
    if (!parse_body(exchange, true, request, request_id)) {
        return;
    }
    std::string error;
    const auto id = runner_.submit(std::move(request), error);
    if (!id) {
        respond_error(exchange, 503, error, request_id);
        return;
    }
    log_.info(kComponent, "job_submitted", {{"request_id", request_id}, {"job", *id}});
    const auto url = "/v1/jobs/" + *id;
    Headers headers;
    headers.add("Content-Type", "application/json; charset=utf-8");
    headers.add("X-Request-Id", request_id);
    headers.add("Location", url);
    exchange.respond(
        202, std::move(headers),
        json{{"id", *id}, {"object", "job"}, {"state", "queued"}, {"status_url", url}}.dump());
}

void WorkloadRoutes::list_jobs(Exchange& exchange, const std::string& request_id) {
    json data = json::array();
    for (const auto& job : store_.list()) {
        auto view = job_to_json(job);
        view.erase("result");
        data.push_back(std::move(view));
    }
    respond_json(exchange, 200, json{{"object", "list"}, {"data", data}}.dump(), request_id);
}

void WorkloadRoutes::job(Exchange& exchange, const std::string& id, const std::string& request_id) {
    const auto& method = exchange.request().method;
    if (method != "GET" && method != "DELETE") {
        method_not_allowed(exchange, "GET, DELETE", request_id);
        return;
    }
    if (!valid_job_id(id)) {
        respond_error(exchange, 404, "no such job", request_id);
        return;
    }
    if (method == "DELETE") {
        const auto outcome = runner_.cancel(id, Clock::now() + seconds(10));
        if (outcome == JobRunner::CancelResult::unknown) {
            respond_error(exchange, 404, "no such job", request_id);
            return;
        }
        log_.info(
            kComponent, "job_deleted",
            {{"request_id", request_id},
             {"job", id},
             {"action", outcome == JobRunner::CancelResult::removed ? "removed" : "cancelled"}});
        if (outcome == JobRunner::CancelResult::removed) {
            respond_json(exchange, 200,
                         json{{"id", id}, {"object", "job"}, {"deleted", true}}.dump(), request_id);
            return;
        }
    }
    const auto record = store_.get(id);
    if (!record) {
        respond_error(exchange, 404, "no such job", request_id);
        return;
    }
    respond_json(exchange, 200,
                 job_to_json(*record).dump(-1, ' ', false, json::error_handler_t::replace),
                 request_id);
}

}  // namespace llama_pool
