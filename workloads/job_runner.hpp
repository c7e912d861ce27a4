#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.hpp"
#include "workloads/cancel_token.hpp"
#include "workloads/job_store.hpp"
#include "workloads/summarize_request.hpp"
#include "workloads/summarizer.hpp"

namespace llama_pool {

// Runs queued jobs, `concurrency` at a time, on threads it owns. A job's request lives here
// only until it ends; its record (state, progress, result) lives in the JobStore.
class JobRunner {
  public:
    // `memo` holds the chunk summaries a resumed job saved, and saves each new one.
    using Work = std::function<SummaryResult(
        const SummarizeRequest& request, const std::string& job_id, CancelToken& cancel,
        const Summarizer::ProgressFn& progress, const ChunkMemo& memo)>;
    // Turns a finished summary into the job's stored result.
    using ResultView = std::function<nlohmann::json(const SummaryResult&)>;

    JobRunner(JobStore& store, Work work, ResultView view, int concurrency);
    ~JobRunner();
    JobRunner(const JobRunner&) = delete;
    JobRunner& operator=(const JobRunner&) = delete;

    // The new job's id, or nullopt with `error` when the store is full or the runner stopped.
    std::optional<std::string> submit(SummarizeRequest request, std::string& error);
    // Queues a job the store found unfinished at load, with the chunk summaries it saved.
    void resume(const std::string& id, SummarizeRequest request, std::vector<SavedChunk> saved);

    enum class CancelResult { unknown, cancelled, removed };
    // A queued job is cancelled at once; a running one has its calls cancelled on the workers
    // and is waited for until `deadline`; a finished one is forgotten (removed).
    CancelResult cancel(const std::string& id, TimePoint deadline);

    // Stops taking jobs and joins every thread, the running jobs' calls cancelled. With a
    // durable store queued and running jobs are left as their records say, to be resumed by
    // the next start; without one they end as interrupted.
    void stop();

  private:
    struct Pending {
        SummarizeRequest request;
        std::vector<SavedChunk> saved;
        std::shared_ptr<CancelToken> cancel = std::make_shared<CancelToken>();
        bool user_cancelled = false;
    };
    void run_loop();

    JobStore& store_;
    Work work_;
    ResultView view_;
    std::mutex mutex_;
    std::condition_variable cv_;       // a job was queued, or the runner stopped
    std::condition_variable done_cv_;  // a job ended
    std::deque<std::string> queue_;
    std::map<std::string, Pending> pending_;  // queued and running jobs
    bool stopping_ = false;
    std::vector<std::thread> threads_;
};

}  // namespace llama_pool
