#include "workloads/job_runner.hpp"

#include <algorithm>

namespace llama_pool {

JobRunner::JobRunner(JobStore& store, Work work, ResultView view, int concurrency)
    : store_(store), work_(std::move(work)), view_(std::move(view)) {
    for (int i = 0; i < std::max(1, concurrency); ++i) {
        threads_.emplace_back([this] { run_loop(); });
    }
}

JobRunner::~JobRunner() {
    stop();
}

std::optional<std::string> JobRunner::submit(SummarizeRequest request, std::string& error) {
    std::lock_guard lock(mutex_);
    if (stopping_) {
        error = "the pool is shutting down";
        return std::nullopt;
    }
    const auto id = store_.add(count_chars(request.text), request_to_json(request), error);
    if (!id) {
        return std::nullopt;
    }
    pending_[*id].request = std::move(request);
    queue_.push_back(*id);
    cv_.notify_one();
    return id;
}

void JobRunner::resume(const std::string& id, SummarizeRequest request,
                       std::vector<SavedChunk> saved) {
    std::lock_guard lock(mutex_);
    if (stopping_) {
        return;  // its record still reads queued: the next start takes it up
    }
    auto& pending = pending_[id];
    pending.request = std::move(request);
    pending.saved = std::move(saved);
    queue_.push_back(id);
    cv_.notify_one();
}

JobRunner::CancelResult JobRunner::cancel(const std::string& id, TimePoint deadline) {
    std::unique_lock lock(mutex_);
    const auto it = pending_.find(id);
    if (it == pending_.end()) {
        lock.unlock();
        return store_.remove(id) ? CancelResult::removed : CancelResult::unknown;
    }
    it->second.user_cancelled = true;
    it->second.cancel->cancel();
    if (const auto q = std::find(queue_.begin(), queue_.end(), id); q != queue_.end()) {
        queue_.erase(q);
        pending_.erase(it);
        store_.finish(id, JobState::cancelled, {}, 499, "cancelled by DELETE");
        return CancelResult::cancelled;
    }
    // Running: its calls are being cancelled; wait for the job to notice.
    done_cv_.wait_until(lock, deadline, [&] { return !pending_.contains(id); });
    return CancelResult::cancelled;
}

void JobRunner::stop() {
    std::vector<std::thread> threads;
    {
        std::lock_guard lock(mutex_);
        if (stopping_) {
            return;
        }
        stopping_ = true;
        for (const auto& id : queue_) {
            if (!store_.durable()) {
                store_.finish(id, JobState::interrupted, {}, 503,
                              "the pool stopped before this job started; submit it again");
            }
            pending_.erase(id);
        }
        queue_.clear();
        for (auto& [id, p] : pending_) {
            p.cancel->cancel();
        }
        threads.swap(threads_);
        cv_.notify_all();
    }
    for (auto& t : threads) {
        t.join();
    }
}

void JobRunner::run_loop() {
    while (true) {
        std::string id;
        const SummarizeRequest* request = nullptr;
        ChunkMemo memo;
        std::shared_ptr<CancelToken> cancel;
        {
            std::unique_lock lock(mutex_);
            cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
            if (stopping_) {
                return;
            }
            id = queue_.front();
            queue_.pop_front();
            // std::map nodes do not move: the request stays put until this thread erases it.
            request = &pending_.at(id).request;
            cancel = pending_.at(id).cancel;
            memo.saved = std::move(pending_.at(id).saved);
        }
        memo.on_done = [&](const SavedChunk& chunk) { store_.save_chunk(id, chunk); };
        store_.set_running(id);
        const auto result = work_(
            *request, id, *cancel,
            [&](const std::vector<LevelProgress>& progress) { store_.set_progress(id, progress); },
            memo);
        std::lock_guard lock(mutex_);
        const bool by_user = pending_.at(id).user_cancelled;
        if (result.ok) {
            store_.finish(id, JobState::succeeded, view_(result), 0, {});
        } else if (by_user) {
            store_.finish(id, JobState::cancelled, {}, 499, "cancelled by DELETE");
        } else if (stopping_) {
            // A durable job keeps its record running and its saved chunks for the next start.
            if (!store_.durable()) {
                store_.finish(id, JobState::interrupted, {}, 503,
                              "the pool stopped while this job ran; submit it again");
            }
        } else {
            store_.finish(id, JobState::failed, {}, result.status, result.error);
        }
        pending_.erase(id);
        done_cv_.notify_all();
    }
}

}  // namespace llama_pool
