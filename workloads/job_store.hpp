#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/log.hpp"
#include "workloads/summarizer.hpp"

namespace llama_pool {

enum class JobState { queued, running, succeeded, failed, cancelled, interrupted };
std::string_view to_string(JobState state);
bool is_final(JobState state);

// What the pool knows of one job; also its file in the data directory.
struct JobRecord {
    std::string id;
    std::string type = "summarize";
    JobState state = JobState::queued;
    std::int64_t created_ms = 0;  // Unix time, so ages survive a restart
    std::int64_t started_ms = 0;
    std::int64_t finished_ms = 0;
    std::size_t text_chars = 0;
    std::vector<LevelProgress> progress;
    nlohmann::json result;  // the summary reply, once succeeded
    int error_status = 0;
    std::string error;
    // Times a restart found this job unfinished and took it up again, and the chunk
    // summaries the last of those found saved (reused instead of asked for again).
    std::size_t resumes = 0;
    std::size_t reused_chunks = 0;
};

// An unfinished job a previous run left, as load() found it: what was asked (the request
// as add() was given it) and the chunk summaries it had finished.
struct ResumableJob {
    std::string id;
    nlohmann::json request;
    std::vector<SavedChunk> saved;
};

// The API view of a job (GET /v1/jobs/{id}), also the persisted form.
nlohmann::json job_to_json(const JobRecord& job);
bool job_from_json(const nlohmann::json& json, JobRecord& job);

struct JobStoreOptions {
    std::size_t max_jobs = 100;  // queued, running and finished together
    double max_age = 86400;      // seconds a finished job is kept
    std::string dir;             // where records are written; empty: memory only
    // Chunk summaries saved for unfinished jobs, all jobs together; past it a job goes on
    // without saving more (a restart then redoes those chunks).
    std::size_t max_saved_bytes = 256u << 20;
};

// Creates `dir` when missing and checks that a file can be written in it, so that a data
// directory the pool cannot use stops it at start rather than losing every job record later
// with only a warning. False with `error` (what failed and why) otherwise.
bool prepare_job_dir(const std::string& dir, std::string& error);

// The bounded set of jobs. Finished jobs go first when room is needed (oldest first) and
// when they are older than max_age; unfinished ones are never evicted, so a full store of
// unfinished jobs refuses new ones. Every state change is written to `dir` (one JSON file a
// job, replaced atomically), so finished results survive a restart. An unfinished job also
// keeps its request (`<id>.request`, written once) and a journal of the chunk summaries it
// finished (`<id>.chunks`, one line each, appended and synced as each completes); both go
// when the job ends. load() hands such jobs back to be resumed. Thread-safe.
class JobStore {
  public:
    using WallClock = std::function<std::int64_t()>;  // Unix milliseconds
    JobStore(JobStoreOptions options, WallClock now_ms, Logger& log);

    // Reads the records a previous run left. Those it left queued or running are queued
    // again when their request was saved (take_resumable() hands them out), and become
    // interrupted, with the reason, when it cannot be read. Returns how many were loaded.
    std::size_t load();
    // The jobs load() queued again, once.
    std::vector<ResumableJob> take_resumable();
    // Whether jobs outlive the process (a data directory is set).
    bool durable() const { return !options_.dir.empty(); }

    // A new queued job's id, or nullopt with `error` when the store is full. `request` is
    // saved with it, so that a restart can run it again.
    std::optional<std::string> add(std::size_t text_chars, const nlohmann::json& request,
                                   std::string& error);
    std::optional<JobRecord> get(const std::string& id);
    std::vector<JobRecord> list();
    // How many jobs are in each state, every state listed.
    std::vector<std::pair<std::string, std::size_t>> counts();

    void set_running(const std::string& id);
    void set_progress(const std::string& id, const std::vector<LevelProgress>& progress);
    // Appends a finished chunk summary to the job's journal (synced before it returns).
    void save_chunk(const std::string& id, const SavedChunk& chunk);
    // Moves a job to a final state with its result (succeeded) or error.
    void finish(const std::string& id, JobState state, nlohmann::json result, int error_status,
                std::string error);
    // Forgets a finished job and deletes its file. False when unknown or not finished.
    bool remove(const std::string& id);

  private:
    // Drops expired finished jobs, then the oldest finished ones until at most `keep` remain.
    void evict_locked(std::size_t keep);
    void persist_locked(const JobRecord& job);
    void unlink_locked(const std::string& id);
    // Drops a job's saved request and journal (it ended, or cannot be resumed).
    void drop_work_locked(const std::string& id);
    // Queues `job` (found unfinished) again from its saved work, or ends it interrupted
    // with the reason it cannot be.
    void resume_or_interrupt_locked(JobRecord& job, int record_format);
    std::string path_for(const std::string& id, std::string_view ext = ".json") const;

    JobStoreOptions options_;
    WallClock now_ms_;
    Logger& log_;
    std::mutex mutex_;
    std::map<std::string, JobRecord> jobs_;
    std::map<std::string, std::size_t> saved_bytes_;  // journal bytes of unfinished jobs
    std::vector<ResumableJob> resumable_;
};

// The saved-work formats this build reads and writes. A record or request of another
// version is not resumed (the job ends interrupted, saying so).
inline constexpr int kJobRecordFormat = 1;
inline constexpr int kJobRequestFormat = 1;

// One journal line and back. A line that does not parse (a write cut short) is refused.
std::string saved_chunk_line(const SavedChunk& chunk);
bool saved_chunk_from_line(std::string_view line, SavedChunk& out);

// 96 random bits from the system's entropy source: the id is what gives access to a job's
// result, so it must not be guessable.
std::string new_job_id();
// Whether `id` has the shape new_job_id() makes (checked before any lookup).
bool valid_job_id(std::string_view id);

}  // namespace llama_pool
