#include "workloads/summarizer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
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

std::string chunk_hash(std::string_view text) {
    std::uint64_t h = 14695981039346656037ULL;
    for (const auto c : text) {
        h ^= static_cast<unsigned char>(c);
        h *= 1099511628211ULL;
    }
    return fmt::format("{:016x}", h);
}

ContextVerdict context_verdict(int status, const std::string& body) {
    if (status != 200 && status != 400) {
        return ContextVerdict::fits;
    }
    const auto parsed = json::parse(body, nullptr, false);
    if (!parsed.is_object()) {
        return ContextVerdict::fits;
    }
    if (status == 200) {
        const auto t = parsed.find("truncated");
        return t != parsed.end() && t->is_boolean() && t->get<bool>() ? ContextVerdict::too_long
                                                                      : ContextVerdict::fits;
    }
    const auto e = parsed.find("error");
    if (e != parsed.end() && e->is_object() &&
        e->value("type", std::string()) == "exceed_context_size_error") {
        return ContextVerdict::too_long;
    }
    return ContextVerdict::fits;
}

struct Summarizer::ChunkOutcome {
    bool ok = false;
    bool cancelled = false;
    bool too_long = false;  // the prompt did not fit a slot's context
    int status = 0;
    std::string error;
    std::string text;
    long long tokens = 0;
    std::size_t retries = 0;
    std::size_t splits = 0;
};

namespace {

// A piece below this is not split further: its prompt is mostly the instructions then.
constexpr std::size_t kMinSplitChars = 200;
constexpr int kMaxSplitDepth = 8;

}  // namespace

Summarizer::ChunkOutcome Summarizer::summarize_chunk(
    const SummarizeRequest& request, const std::string& prompt, const std::string& text,
    const std::string& request_id, CancelToken& cancel, int slot_context, int depth) const {
    json body = request.sampling;
    body["prompt"] = render_prompt(prompt, text, request.topic);
    const int n_predict = request.n_predict.value_or(summary_tokens_for(count_chars(text)));
    body["n_predict"] = n_predict;
    body["stream"] = false;
    // Counted before sending: a prompt over the slot's context would be cut silently by
    // some forks, or refused by current llama-server after a queue wait.
    bool fits = true;
    std::optional<int> prompt_tokens;
    if (slot_context > 0 && context_.count_tokens) {
        prompt_tokens = context_.count_tokens(body["prompt"].get<std::string>());
        fits = !prompt_tokens || *prompt_tokens + n_predict <= slot_context;
    }
    ChunkOutcome out;
    if (fits) {
        out = summarize_once(body.dump(-1, ' ', false, json::error_handler_t::replace), request_id,
                             cancel);
        if (!out.too_long) {
            return out;
        }
    }
    const auto chars = count_chars(text);
    ChunkerOptions half = request.chunking;
    half.max_chars = std::max(kMinSplitChars, chars / 2 + 1);
    half.overlap = std::min(half.overlap, half.max_chars / 4);
    const auto pieces = chunk_text(text, half);
    if (depth >= kMaxSplitDepth || chars < 2 * kMinSplitChars || pieces.size() < 2) {
        out = {};
        out.status = 502;
        out.error = fmt::format(
            "a piece of {} characters does not fit a worker slot's context ({} tokens{}) with "
            "n_predict {}; nothing was cut: lower n_predict or start the workers with a larger "
            "context",
            chars, slot_context > 0 ? std::to_string(slot_context) : "unknown",
            prompt_tokens ? fmt::format(", its prompt has {}", *prompt_tokens) : "", n_predict);
        return out;
    }
    ChunkOutcome joined;
    joined.ok = true;
    joined.retries = out.retries;
    joined.splits = 1;
    for (std::size_t i = 0; i < pieces.size(); ++i) {
        const auto& p = pieces[i];
        auto part = summarize_chunk(request, prompt, text.substr(p.begin, p.end - p.begin),
                                    fmt::format("{}p{}", request_id, i + 1), cancel, slot_context,
                                    depth + 1);
        joined.retries += part.retries;
        joined.splits += part.splits;
        if (!part.ok) {
            part.retries = joined.retries;
            part.splits = joined.splits;
            return part;
        }
        joined.tokens += part.tokens;
        joined.text += (joined.text.empty() ? "" : "\n\n") + part.text;
    }
    return joined;
}

Summarizer::ChunkOutcome Summarizer::summarize_once(const std::string& payload,
                                                    const std::string& request_id,
                                                    CancelToken& cancel) const {
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
        if (context_verdict(reply.status, reply.body) == ContextVerdict::too_long) {
            out.too_long = true;
            out.status = 502;
            out.error =
                fmt::format("worker {} could not fit the chunk in its context", reply.worker);
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
            // The worker refused what we sent: the same request fails the same way everywhere.
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
                              CancelToken& cancel, const ProgressFn& progress,
                              const ChunkMemo* memo) const {
    SummaryResult result;
    const auto started = time_.now();
    std::vector<LevelProgress> levels_progress;
    std::string input = request.text;
    const int slot_context = context_.slot_context ? context_.slot_context() : 0;
    for (int level = 1;; ++level) {
        const auto level_started = time_.now();
        const auto chunks = chunk_text(input, request.chunking);
        const auto& prompt = level == 1 ? request.map_prompt : request.reduce_prompt;
        std::vector<std::string> outputs(chunks.size());

        std::mutex mutex;
        levels_progress.push_back({level, chunks.size(), 0});
        // Chunks a previous run of this job finished are taken as they were; the rest are
        // the work left, in the document's order.
        std::vector<std::size_t> todo;
        std::vector<std::string> hashes(chunks.size());
        for (std::size_t i = 0; i < chunks.size(); ++i) {
            hashes[i] = chunk_hash(
                std::string_view(input).substr(chunks[i].begin, chunks[i].end - chunks[i].begin));
            const SavedChunk* saved = nullptr;
            if (memo != nullptr) {
                for (const auto& s : memo->saved) {
                    if (s.level == level && s.index == i && s.total == chunks.size() &&
                        s.input_hash == hashes[i]) {
                        saved = &s;
                    }
                }
            }
            if (saved != nullptr) {
                outputs[i] = saved->summary;
                result.tokens_predicted += saved->tokens;
                ++result.reused;
                ++levels_progress.back().done;
            } else {
                todo.push_back(i);
            }
        }
        if (progress) {
            progress(levels_progress);
        }
        std::optional<ChunkOutcome> failure;
        std::atomic<std::size_t> next{0};
        const auto work = [&] {
            while (true) {
                const auto t = next.fetch_add(1);
                if (t >= todo.size() || cancel.cancelled()) {
                    return;
                }
                const auto i = todo[t];
                const auto& c = chunks[i];
                auto outcome = summarize_chunk(
                    request, prompt, input.substr(c.begin, c.end - c.begin),
                    fmt::format("{}-l{}c{}", request_id, level, i + 1), cancel, slot_context);
                std::lock_guard lock(mutex);
                result.retries += outcome.retries;
                result.splits += outcome.splits;
                if (!outcome.ok) {
                    if (!failure && !outcome.cancelled) {
                        outcome.error = fmt::format("level {} chunk {} of {}: {}", level, i + 1,
                                                    chunks.size(), outcome.error);
                        failure = std::move(outcome);
                    }
                    cancel.cancel();  // the summary cannot complete; stop the other calls
                    return;
                }
                if (memo != nullptr && memo->on_done) {
                    memo->on_done(
                        {level, i, chunks.size(), hashes[i], outcome.text, outcome.tokens});
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
            const auto helpers =
                std::max<std::size_t>(std::min<std::size_t>(todo.size(), parallel), 1) - 1;
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
