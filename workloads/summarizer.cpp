#include "workloads/summarizer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

namespace llama_pool {

namespace {

using nlohmann::json;

// More chunks in flight than this gains nothing on any pool we expect and costs a thread each.
constexpr int kMaxParallel = 64;

std::string trimmed(const std::string& s) {
    const auto first = s.find_first_not_of(" \t\r\n");
    if (first == std::string::npos) {
        return {};
    }
    return s.substr(first, s.find_last_not_of(" \t\r\n") - first + 1);
}

// The message in a llama-server style error body, or the body itself, shortened.
std::string error_message(const std::string& body) {
    const auto parsed = json::parse(body, nullptr, false);
    if (parsed.is_object() && parsed.contains("error") && parsed["error"].is_object()) {
        const auto& e = parsed["error"];
        if (e.contains("message") && e["message"].is_string()) {
            return e["message"].get<std::string>();
        }
    }
    return body.substr(0, 200);
}

std::string join_summaries(const std::vector<std::string>& parts) {
    std::string out;
    for (const auto& p : parts) {
        if (!out.empty()) {
            out += "\n\n";
        }
        out += p;
    }
    return out;
}

}  // namespace

struct Summarizer::ChunkOutcome {
    bool ok = false;
    bool cancelled = false;
    int status = 0;
    std::string error;
    std::string text;
    long long tokens = 0;
    std::size_t retries = 0;
};

Summarizer::ChunkOutcome Summarizer::summarize_chunk(const SummarizeRequest& request,
                                                     const std::string& prompt,
                                                     const std::string& text,
                                                     const std::string& request_id,
                                                     CancelToken& cancel) const {
    json body = request.sampling;
    body["prompt"] = render_prompt(prompt, text, request.topic);
    body["n_predict"] = request.n_predict.value_or(summary_tokens_for(count_chars(text)));
    body["stream"] = false;
    const auto payload = body.dump(-1, ' ', false, json::error_handler_t::replace);

    ChunkOutcome out;
    std::set<std::string> avoid;
    for (int attempt = 1; attempt <= attempts_; ++attempt) {
        if (cancel.cancelled()) {
            out.cancelled = true;
            return out;
        }
        const auto reply = call_(payload, request_id, avoid);
        if (cancel.cancelled()) {
            out.cancelled = true;
            return out;
        }
        if (reply.status == 200) {
            const auto parsed = json::parse(reply.body, nullptr, false);
            if (parsed.is_object() && parsed.contains("content") && parsed["content"].is_string()) {
                out.ok = true;
                out.text = trimmed(parsed["content"].get<std::string>());
                if (parsed.contains("tokens_predicted") &&
                    parsed["tokens_predicted"].is_number_integer()) {
                    out.tokens = parsed["tokens_predicted"].get<long long>();
                }
                return out;
            }
            out.status = 502;
            out.error =
                fmt::format("worker {} answered 200 without a \"content\" string", reply.worker);
        } else if (reply.status >= 400 && reply.status < 500) {
            // The worker refused what we sent (most often a chunk over its context size):
            // the same request fails the same way everywhere.
            out.status = reply.status == 400 ? 400 : 502;
            out.error = fmt::format("worker {} refused a chunk with {}: {}", reply.worker,
                                    reply.status, error_message(reply.body));
            return out;
        } else if (reply.status == 0) {
            out.status = 502;
            out.error = fmt::format("worker {} broke off its answer", reply.worker);
        } else {
            // 503 and 504 made here are the pool's own (queue full, deadline): pass them on.
            out.status = reply.status == 503 || reply.status == 504 ? reply.status : 502;
            out.error = fmt::format("{} from {}: {}", reply.status,
                                    reply.worker.empty() ? "the pool" : "worker " + reply.worker,
                                    error_message(reply.body));
        }
        if (!reply.worker.empty()) {
            avoid.insert(reply.worker);
        }
        if (attempt < attempts_) {
            ++out.retries;
        }
    }
    return out;
}

SummaryResult Summarizer::run(const SummarizeRequest& request, const std::string& request_id,
                              CancelToken& cancel, const ProgressFn& progress) const {
    SummaryResult result;
    const auto started = time_.now();
    std::vector<LevelProgress> levels_progress;
    std::string input = request.text;
    for (int level = 1;; ++level) {
        const auto level_started = time_.now();
        const auto chunks = chunk_text(input, request.chunking);
        const auto& prompt = level == 1 ? request.map_prompt : request.reduce_prompt;
        std::vector<std::string> outputs(chunks.size());

        std::mutex mutex;
        levels_progress.push_back({level, chunks.size(), 0});
        if (progress) {
            progress(levels_progress);
        }
        std::optional<ChunkOutcome> failure;
        std::atomic<std::size_t> next{0};
        const auto work = [&] {
            while (true) {
                const auto i = next.fetch_add(1);
                if (i >= chunks.size() || cancel.cancelled()) {
                    return;
                }
                const auto& c = chunks[i];
                auto outcome =
                    summarize_chunk(request, prompt, input.substr(c.begin, c.end - c.begin),
                                    fmt::format("{}-l{}c{}", request_id, level, i + 1), cancel);
                std::lock_guard lock(mutex);
                result.retries += outcome.retries;
                if (!outcome.ok) {
                    if (!failure && !outcome.cancelled) {
                        outcome.error = fmt::format("level {} chunk {} of {}: {}", level, i + 1,
                                                    chunks.size(), outcome.error);
                        failure = std::move(outcome);
                    }
                    cancel.cancel();  // the summary cannot complete; stop the other calls
                    return;
                }
                outputs[i] = std::move(outcome.text);
                result.tokens_predicted += outcome.tokens;
                ++result.completions;
                ++levels_progress.back().done;
                if (progress) {
                    progress(levels_progress);
                }
            }
        };
        {
            const auto parallel = std::clamp(parallelism_ ? parallelism_() : 1, 1, kMaxParallel);
            const auto helpers = std::min<std::size_t>(chunks.size(), parallel) - 1;
            std::vector<std::jthread> threads;
            threads.reserve(helpers);
            for (std::size_t t = 0; t < helpers; ++t) {
                threads.emplace_back(work);
            }
            work();
        }  // every helper is joined here
        if (failure) {
            result.status = failure->status;
            result.error = failure->error;
            result.seconds = to_seconds(time_.now() - started);
            return result;
        }
        if (cancel.cancelled()) {
            result.status = 499;
            result.error = "cancelled";
            result.seconds = to_seconds(time_.now() - started);
            return result;
        }
        auto joined = join_summaries(outputs);
        result.levels.push_back({level, chunks.size(), count_chars(input), count_chars(joined),
                                 to_seconds(time_.now() - level_started)});
        // Another round only helps when this one shortened the text; a model that answers
        // at length would otherwise spend every remaining level for nothing.
        const bool shrank = result.levels.back().output_chars < result.levels.back().input_chars;
        if (chunks.size() <= 1 || level >= request.levels || !shrank) {
            result.converged = chunks.size() <= 1;
            result.summary = std::move(joined);
            break;
        }
        input = std::move(joined);
    }
    result.ok = true;
    result.seconds = to_seconds(time_.now() - started);
    return result;
}

}  // namespace llama_pool
