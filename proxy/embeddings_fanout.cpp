#include "proxy/embeddings_fanout.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include "common/error_body.hpp"
#include "proxy/buffered_exchange.hpp"
#include "proxy/embedding_batch.hpp"
#include "proxy/pool_routes.hpp"

namespace llama_pool {

namespace {

// A slice's reply is held in memory until all are in; past this it is refused (a slice of
// a batch this large would not fit a worker's reply either).
constexpr std::size_t kMaxSliceReplyBytes = 256u << 20;

struct SliceRun {
    EmbeddingSliceReply reply;
    Headers headers;
    RelayOutcome outcome;
    int attempts = 0;
};

}  // namespace

bool is_embeddings_route(std::string_view path) {
    return path == "/v1/embeddings" || path == "/embeddings" || path == "/embedding";
}

bool EmbeddingsFanout::serve(Exchange& exchange, ModelGroup& group, const std::string& path,
                             const std::string& target, const std::string& request_id,
                             RelayOutcome& outcome) const {
    const auto& request = exchange.request();
    if (request.method != "POST" || !is_embeddings_route(path)) {
        return false;
    }
    const auto body = nlohmann::json::parse(request.body, nullptr, false);
    const auto batch = find_embedding_batch(body);
    if (!batch) {
        return false;
    }
    std::vector<int> slots;
    for (const auto& b : group.registry().snapshot()) {
        if (b.available && b.breaker != BreakerState::open) {
            slots.push_back(b.capacity);
        }
    }
    const auto slices = plan_embedding_slices(batch->count, slots);
    if (slices.size() < 2) {
        return false;
    }
    const auto started = Clock::now();
    // Set when a slice failed for good: the others are then cancelled, their work is moot.
    std::atomic<bool> abandoned{false};
    WakeSignal wake;
    std::vector<SliceRun> runs(slices.size());
    const auto run_slice = [&](std::size_t i) {
        auto& run = runs[i];
        std::set<std::string> avoid;
        // A second try only for a reply that broke off after it started (the relay retries
        // everything before that itself): nothing has reached the client yet.
        for (int attempt = 0; attempt < 2 && !abandoned.load(); ++attempt) {
            HttpRequest sub;
            sub.method = request.method;
            sub.target = target;
            sub.headers = request.headers;
            sub.body = embedding_slice_body(body, *batch, slices[i]);
            IoWatch watch = exchange.watch();
            watch.cancel_fd = wake.fd();
            BufferedExchange slice_exchange(
                std::move(sub), exchange.remote_address(), watch,
                [&] { return abandoned.load() || exchange.client_gone(); }, kMaxSliceReplyBytes);
            auto relayed = group.relay().forward(slice_exchange, target,
                                                 fmt::format("{}-s{}", request_id, i + 1), avoid);
            run.attempts += relayed.attempts;
            run.outcome = std::move(relayed);
            if (slice_exchange.complete()) {
                run.reply = {slice_exchange.response_status(), slice_exchange.response_body()};
                run.headers = slice_exchange.response_headers();
                break;
            }
            if (!run.outcome.worker.empty()) {
                avoid.insert(run.outcome.worker);
            }
        }
        const auto status = run.reply.status;
        if (status < 200 || status >= 300) {
            abandoned = true;
            wake.notify();
        }
    };
    {
        std::vector<std::jthread> helpers;
        helpers.reserve(slices.size() - 1);
        for (std::size_t i = 1; i < slices.size(); ++i) {
            helpers.emplace_back(run_slice, i);
        }
        run_slice(0);
    }  // every helper is joined here

    outcome = RelayOutcome{};
    std::vector<EmbeddingSliceReply> replies;
    std::string workers;
    for (const auto& run : runs) {
        replies.push_back(run.reply);
        outcome.attempts += run.attempts;
        outcome.queue_seconds = std::max(outcome.queue_seconds, run.outcome.queue_seconds);
        outcome.retry_reasons.insert(outcome.retry_reasons.end(), run.outcome.retry_reasons.begin(),
                                     run.outcome.retry_reasons.end());
        if (outcome.rejected == RejectReason::none) {
            outcome.rejected = run.outcome.rejected;
        }
        workers += (workers.empty() ? "" : ",") + run.outcome.worker;
    }
    outcome.worker = workers;
    if (exchange.client_gone()) {
        outcome.client_gone = true;
        return true;
    }
    const auto merged = merge_embedding_replies(slices, replies);
    if (merged.error == EmbeddingMergeError::slice_failed) {
        const auto& failed = runs[merged.slice];
        outcome.status = failed.reply.status;
        exchange.respond(failed.reply.status, client_response_headers(failed.headers, request_id),
                         failed.reply.body);
    } else if (merged.error != EmbeddingMergeError::none) {
        log_.warn("proxy", "embeddings_merge_failed",
                  {{"request_id", request_id},
                   {"reason", to_string(merged.error)},
                   {"slice", merged.slice + 1},
                   {"worker", runs[merged.slice].outcome.worker}});
        outcome.status = 502;
        outcome.rejected = RejectReason::none;
        respond_json(exchange, 502, make_error_body(502, merged.message), request_id);
    } else {
        outcome.status = 200;
        exchange.respond(200, client_response_headers(runs.front().headers, request_id),
                         merged.body);
    }
    outcome.first_byte_seconds = to_seconds(Clock::now() - started);
    log_.debug("proxy", "embeddings_fanout",
               {{"request_id", request_id},
                {"inputs", batch->count},
                {"slices", slices.size()},
                {"workers", workers},
                {"status", outcome.status}});
    return true;
}

}  // namespace llama_pool
