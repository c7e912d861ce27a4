#pragma once

#include <cstddef>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.hpp"
#include "workloads/cancel_token.hpp"
#include "workloads/summarize_request.hpp"

namespace llama_pool {

// One completion's answer as the pool's relay gave it.
struct CompletionReply {
    int status = 0;  // 0: no answer at all (cancelled, or cut off mid-body)
    std::string body;
    std::string worker;
};

// Sends one /completion body through the pool. `avoid` names workers that already failed
// this chunk, to be used only when nothing else is free.
using CompletionCall = std::function<CompletionReply(
    const std::string& body, const std::string& request_id, const std::set<std::string>& avoid)>;

// What fits one worker slot, learnt from the workers themselves. Either may be empty.
struct ContextProbe {
    // Tokens per slot (a worker's n_ctx); 0 when unknown. Asked once per summary.
    std::function<int()> slot_context;
    // Tokens in a prompt (the worker's /tokenize); nullopt when it could not say.
    std::function<std::optional<int>(const std::string& prompt)> count_tokens;
};

struct LevelProgress {
    int level = 0;
    std::size_t total = 0;  // chunks at this level
    std::size_t done = 0;
};

// A chunk summary a job already finished, kept in its record so that a resumed job does not
// ask a worker for it again.
struct SavedChunk {
    int level = 0;
    std::size_t index = 0;  // 0-based within its level
    std::size_t total = 0;  // chunks at that level
    // Of the chunk's text: a chunk is reused only for the very text it summarized, so a
    // record from a pool that chunks differently redoes the work instead of mixing it up.
    std::string input_hash;
    std::string summary;
    long long tokens = 0;
};

// What a summary may reuse, and where it reports each chunk summary it finishes.
struct ChunkMemo {
    std::vector<SavedChunk> saved;
    std::function<void(const SavedChunk&)> on_done;
};

// A stable 64-bit FNV-1a digest of `text` in 16 hex digits (not for security: it tells a
// saved chunk's text from another). Pure.
std::string chunk_hash(std::string_view text);

struct LevelReport {
    int level = 0;
    std::size_t chunks = 0;
    std::size_t input_chars = 0;
    std::size_t output_chars = 0;
    double seconds = 0;
};

struct SummaryResult {
    bool ok = false;
    int status = 200;   // the HTTP status a failure maps to (400, 499, 502, 503, 504)
    std::string error;  // what failed, for the client
    std::string summary;
    // False when `levels` rounds still left more than one chunk, or a round did not shorten
    // the text: the summary is then the last round's summaries joined, nothing dropped.
    bool converged = false;
    std::vector<LevelReport> levels;
    std::size_t completions = 0;  // successful calls
    std::size_t reused = 0;       // chunk summaries taken from a ChunkMemo, not asked for
    std::size_t retries = 0;
    // Chunks split in smaller pieces because they did not fit a slot's context (measured
    // before sending, or a reply that said it was truncated or refused as too long).
    std::size_t splits = 0;
    long long tokens_predicted = 0;
    double seconds = 0;
};

// Recursive summarization: chunk the text, summarize every chunk in parallel, join the
// summaries in order and repeat on the joined text until it fits one chunk. A chunk that
// fails with a server error is retried on another worker; a client error (4xx) or the last
// failed attempt ends the run, and the calls still running are cancelled. A chunk whose
// prompt does not fit a slot's context (counted in tokens before sending, or answered
// "truncated": true by forks that cut prompts silently, or 400 as too long) is split in
// smaller pieces and those summarized instead: a truncated reply never becomes a summary.
class Summarizer {
  public:
    // `parallelism()`: how many chunks to have in flight at once (the pool's free capacity);
    // `attempts`: tries per chunk.
    Summarizer(CompletionCall call, std::function<int()> parallelism, int attempts,
               const TimeSource& time, ContextProbe context = {})
        : call_(std::move(call)),
          parallelism_(std::move(parallelism)),
          attempts_(attempts < 1 ? 1 : attempts),
          time_(time),
          context_(std::move(context)) {}

    using ProgressFn = std::function<void(const std::vector<LevelProgress>&)>;
    // `memo`, when given, supplies chunk summaries already done (a resumed job) and hears of
    // every chunk summary finished.
    SummaryResult run(const SummarizeRequest& request, const std::string& request_id,
                      CancelToken& cancel, const ProgressFn& progress = {},
                      const ChunkMemo* memo = nullptr) const;

  private:
    struct ChunkOutcome;
    ChunkOutcome summarize_chunk(const SummarizeRequest& request, const std::string& prompt,
                                 const std::string& text, const std::string& request_id,
                                 CancelToken& cancel, int slot_context, int depth = 0) const;
    ChunkOutcome summarize_once(const std::string& payload, const std::string& request_id,
                                CancelToken& cancel) const;

    CompletionCall call_;
    std::function<int()> parallelism_;
    int attempts_;
    const TimeSource& time_;
    ContextProbe context_;
};

// Whether a reply means the prompt did not fit the worker's slot: 200 with "truncated": true
// (older forks cut the prompt and go on), or 400 exceed_context_size_error (current). Pure.
enum class ContextVerdict { fits, too_long };
ContextVerdict context_verdict(int status, const std::string& body);

}  // namespace llama_pool
