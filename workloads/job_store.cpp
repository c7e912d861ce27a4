#include "workloads/job_store.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <utility>

namespace llama_pool {

namespace {

using nlohmann::json;
namespace fs = std::filesystem;

constexpr std::string_view kIdPrefix = "job-";
constexpr std::size_t kIdHexDigits = 24;

bool write_file_atomically(const std::string& path, const std::string& data, std::string& error) {
    const auto tmp = path + ".tmp";
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        error = fmt::format("open {}: {}", tmp, std::strerror(errno));
        return false;
    }
    std::size_t written = 0;
    while (written < data.size()) {
        const auto n = ::write(fd, data.data() + written, data.size() - written);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            error = fmt::format("write {}: {}", tmp, std::strerror(errno));
            ::close(fd);
            return false;
        }
        written += static_cast<std::size_t>(n);
    }
    // The rename must not reach the disk before the data, or a crash leaves an empty record.
    const bool synced = ::fsync(fd) == 0;
    ::close(fd);
    if (!synced || ::rename(tmp.c_str(), path.c_str()) != 0) {
        error = fmt::format("save {}: {}", path, std::strerror(errno));
        return false;
    }
    return true;
}

// Appends `data` and syncs it, so a line the caller was told is saved survives a crash.
bool append_synced(const std::string& path, const std::string& data, std::string& error) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) {
        error = fmt::format("open {}: {}", path, std::strerror(errno));
        return false;
    }
    std::size_t written = 0;
    while (written < data.size()) {
        const auto n = ::write(fd, data.data() + written, data.size() - written);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            error = fmt::format("write {}: {}", path, std::strerror(errno));
            ::close(fd);
            return false;
        }
        written += static_cast<std::size_t>(n);
    }
    const bool synced = ::fsync(fd) == 0;
    ::close(fd);
    if (!synced) {
        error = fmt::format("sync {}: {}", path, std::strerror(errno));
    }
    return synced;
}

std::optional<std::string> read_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        return std::nullopt;
    }
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

// Per level, the chunks saved of how many: where a resumed job's progress starts.
std::vector<LevelProgress> progress_of(const std::vector<SavedChunk>& saved) {
    std::map<int, LevelProgress> levels;
    for (const auto& c : saved) {
        auto& l = levels[c.level];
        l.level = c.level;
        l.total = std::max(l.total, c.total);
        ++l.done;
    }
    std::vector<LevelProgress> out;
    for (const auto& [level, p] : levels) {
        out.push_back(p);
    }
    return out;
}

}  // namespace

std::string saved_chunk_line(const SavedChunk& chunk) {
    return json{{"level", chunk.level},     {"index", chunk.index},     {"total", chunk.total},
                {"hash", chunk.input_hash}, {"summary", chunk.summary}, {"tokens", chunk.tokens}}
               .dump(-1, ' ', false, json::error_handler_t::replace) +
           "\n";
}

bool saved_chunk_from_line(std::string_view line, SavedChunk& out) {
    const auto doc = json::parse(line, nullptr, false);
    if (!doc.is_object()) {
        return false;  // also a line cut short by a crash: truncated JSON never parses
    }
    try {
        out.level = doc.at("level").get<int>();
        out.index = doc.at("index").get<std::size_t>();
        out.total = doc.at("total").get<std::size_t>();
        out.input_hash = doc.at("hash").get<std::string>();
        out.summary = doc.at("summary").get<std::string>();
        out.tokens = doc.at("tokens").get<long long>();
    } catch (const json::exception&) {
        return false;
    }
    return out.level >= 1 && out.index < out.total;
}

std::string_view to_string(JobState state) {
    switch (state) {
        case JobState::queued:
            return "queued";
        case JobState::running:
            return "running";
        case JobState::succeeded:
            return "succeeded";
        case JobState::failed:
            return "failed";
        case JobState::cancelled:
            return "cancelled";
        case JobState::interrupted:
            return "interrupted";
    }
    return "unknown";
}

bool is_final(JobState state) {
    return state != JobState::queued && state != JobState::running;
}

json job_to_json(const JobRecord& job) {
    json levels = json::array();
    std::size_t done = 0;
    for (const auto& l : job.progress) {
        levels.push_back({{"level", l.level}, {"done", l.done}, {"total", l.total}});
        done += l.done;
    }
    json out = {{"id", job.id},
                {"object", "job"},
                {"type", job.type},
                {"state", to_string(job.state)},
                {"created_at_ms", job.created_ms},
                {"text_chars", job.text_chars},
                {"progress", {{"chunks_done", done}, {"levels", levels}}}};
    if (job.started_ms != 0) {
        out["started_at_ms"] = job.started_ms;
    }
    if (job.finished_ms != 0) {
        out["finished_at_ms"] = job.finished_ms;
    }
    if (job.state == JobState::succeeded) {
        out["result"] = job.result;
    }
    if (!job.error.empty()) {
        out["error"] = {{"code", job.error_status}, {"message", job.error}};
    }
    if (job.resumes > 0) {
        out["resumed"] = {{"times", job.resumes}, {"reused_chunks", job.reused_chunks}};
    }
    return out;
}

bool job_from_json(const json& in, JobRecord& job) {
    try {
        job.id = in.at("id").get<std::string>();
        job.type = in.value("type", "summarize");
        const auto state = in.at("state").get<std::string>();
        bool known = false;
        for (const auto s : {JobState::queued, JobState::running, JobState::succeeded,
                             JobState::failed, JobState::cancelled, JobState::interrupted}) {
            if (to_string(s) == state) {
                job.state = s;
                known = true;
            }
        }
        job.created_ms = in.at("created_at_ms").get<std::int64_t>();
        job.started_ms = in.value("started_at_ms", std::int64_t{0});
        job.finished_ms = in.value("finished_at_ms", std::int64_t{0});
        job.text_chars = in.value("text_chars", std::size_t{0});
        job.progress.clear();
        for (const auto& l : in.at("progress").at("levels")) {
            job.progress.push_back({l.at("level").get<int>(), l.at("total").get<std::size_t>(),
                                    l.at("done").get<std::size_t>()});
        }
        job.result = in.value("result", json());
        if (const auto r = in.find("resumed"); r != in.end() && r->is_object()) {
            job.resumes = r->value("times", std::size_t{0});
            job.reused_chunks = r->value("reused_chunks", std::size_t{0});
        }
        if (in.contains("error")) {
            job.error_status = in["error"].at("code").get<int>();
            job.error = in["error"].at("message").get<std::string>();
        }
        return known && valid_job_id(job.id);
    } catch (const json::exception&) {
        return false;
    }
}

std::string new_job_id() {
    std::random_device entropy;
    std::string id(kIdPrefix);
    for (std::size_t i = 0; i < kIdHexDigits; i += 8) {
        id += fmt::format("{:08x}", entropy());
    }
    return id;
}

bool valid_job_id(std::string_view id) {
    if (id.size() != kIdPrefix.size() + kIdHexDigits ||
        id.substr(0, kIdPrefix.size()) != kIdPrefix) {
        return false;
    }
    return std::all_of(id.begin() + static_cast<std::ptrdiff_t>(kIdPrefix.size()), id.end(),
                       [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

JobStore::JobStore(JobStoreOptions options, WallClock now_ms, Logger& log)
    : options_(std::move(options)), now_ms_(std::move(now_ms)), log_(log) {}

std::string JobStore::path_for(const std::string& id, std::string_view ext) const {
    return (fs::path(options_.dir) / (id + std::string(ext))).string();
}

std::size_t JobStore::load() {
    std::lock_guard lock(mutex_);
    if (options_.dir.empty()) {
        return 0;
    }
    std::error_code ec;
    if (!fs::is_directory(options_.dir, ec)) {
        return 0;  // created with the first job
    }
    std::size_t loaded = 0;
    std::vector<fs::path> work_files;
    for (const auto& entry : fs::directory_iterator(options_.dir, ec)) {
        const auto path = entry.path();
        if (path.extension() == ".tmp") {
            fs::remove(path, ec);  // a save cut short; the record before it is intact
            continue;
        }
        if (path.extension() == ".request" || path.extension() == ".chunks") {
            work_files.push_back(path);
            continue;
        }
        if (path.extension() != ".json") {
            continue;
        }
        const auto text = read_file(path);
        const auto doc = json::parse(text.value_or(""), nullptr, false);
        JobRecord job;
        const auto stem = path.stem().string();
        if (!job_from_json(doc, job) || stem != job.id) {
            log_.warn("jobs", "job_file_unreadable", {{"path", path.string()}});
            if (!valid_job_id(stem)) {
                continue;
            }
            // The id is known from the file's name: the job stays visible, saying what
            // happened, instead of vanishing.
            job = JobRecord{};
            job.id = stem;
            job.created_ms = now_ms_();
            job.state = JobState::interrupted;
            job.finished_ms = job.created_ms;
            job.error_status = 503;
            job.error =
                "this job's record could not be read after a restart (corrupt or cut "
                "short), so it cannot be resumed; submit it again";
            drop_work_locked(job.id);
            persist_locked(job);
        } else if (is_final(job.state)) {
            drop_work_locked(job.id);  // ended between saving its state and dropping its work
        } else {
            resume_or_interrupt_locked(job, doc.value("format", 0));
        }
        jobs_[job.id] = std::move(job);
        ++loaded;
    }
    for (const auto& path : work_files) {
        if (!jobs_.contains(path.stem().string())) {
            fs::remove(path, ec);  // its record is gone: nothing can use it
        }
    }
    std::sort(resumable_.begin(), resumable_.end(),
              [&](const ResumableJob& a, const ResumableJob& b) {
                  return jobs_[a.id].created_ms < jobs_[b.id].created_ms;
              });
    evict_locked(options_.max_jobs);
    return loaded;
}

void JobStore::resume_or_interrupt_locked(JobRecord& job, int record_format) {
    const auto interrupt = [&](const std::string& why) {
        job.state = JobState::interrupted;
        job.finished_ms = now_ms_();
        job.error_status = 503;
        job.error = fmt::format(
            "the pool stopped while this job was queued or running and it cannot be resumed: "
            "{}; submit it again",
            why);
        drop_work_locked(job.id);
        persist_locked(job);
        log_.warn("jobs", "job_not_resumed", {{"job", job.id}, {"reason", why}});
    };
    if (record_format > kJobRecordFormat) {
        interrupt(fmt::format("its record has format {}, this version reads format {}",
                              record_format, kJobRecordFormat));
        return;
    }
    const auto request_text = read_file(path_for(job.id, ".request"));
    if (!request_text) {
        interrupt("its request was not saved (a record from a version without resumable jobs)");
        return;
    }
    const auto request = json::parse(*request_text, nullptr, false);
    if (!request.is_object() || !request.contains("format") ||
        !request["format"].is_number_integer() || !request.contains("request")) {
        interrupt("its saved request is corrupt");
        return;
    }
    if (request["format"].get<int>() != kJobRequestFormat) {
        interrupt(fmt::format("its saved request has format {}, this version reads format {}",
                              request["format"].get<int>(), kJobRequestFormat));
        return;
    }
    ResumableJob resumable{job.id, request["request"], {}};
    std::string kept;
    bool torn = false;
    if (const auto journal = read_file(path_for(job.id, ".chunks"))) {
        std::istringstream lines(*journal);
        for (std::string line; std::getline(lines, line);) {
            SavedChunk chunk;
            if (saved_chunk_from_line(line, chunk)) {
                resumable.saved.push_back(std::move(chunk));
                kept += line + "\n";
            } else {
                torn = true;
            }
        }
    }
    // Rewritten without the broken lines, so that new appends do not glue onto a torn one.
    std::string error;
    if (torn && !write_file_atomically(path_for(job.id, ".chunks"), kept, error)) {
        log_.warn("jobs", "job_save_failed", {{"job", job.id}, {"error", error}});
    }
    saved_bytes_[job.id] = kept.size();
    job.state = JobState::queued;
    job.finished_ms = 0;
    job.error_status = 0;
    job.error.clear();
    ++job.resumes;
    job.reused_chunks = resumable.saved.size();
    job.progress = progress_of(resumable.saved);
    persist_locked(job);
    resumable_.push_back(std::move(resumable));
}

std::vector<ResumableJob> JobStore::take_resumable() {
    std::lock_guard lock(mutex_);
    return std::exchange(resumable_, {});
}

void JobStore::evict_locked(std::size_t keep) {
    const auto now = now_ms_();
    const auto max_age_ms = static_cast<std::int64_t>(options_.max_age * 1000);
    for (auto it = jobs_.begin(); it != jobs_.end();) {
        if (is_final(it->second.state) && now - it->second.finished_ms > max_age_ms) {
            unlink_locked(it->first);
            it = jobs_.erase(it);
        } else {
            ++it;
        }
    }
    while (jobs_.size() > keep) {
        auto oldest = jobs_.end();
        for (auto it = jobs_.begin(); it != jobs_.end(); ++it) {
            if (is_final(it->second.state) &&
                (oldest == jobs_.end() || it->second.finished_ms < oldest->second.finished_ms)) {
                oldest = it;
            }
        }
        if (oldest == jobs_.end()) {
            return;
        }
        unlink_locked(oldest->first);
        jobs_.erase(oldest);
    }
}

std::optional<std::string> JobStore::add(std::size_t text_chars, const nlohmann::json& request,
                                         std::string& error) {
    std::lock_guard lock(mutex_);
    evict_locked(options_.max_jobs - 1);  // room for the new one, if a finished job can go
    if (jobs_.size() >= options_.max_jobs) {
        error = fmt::format(
            "{} jobs are queued or running, the most this pool keeps "
            "(jobs.max_jobs); retry when some have finished",
            jobs_.size());
        return std::nullopt;
    }
    JobRecord job;
    job.id = new_job_id();
    job.created_ms = now_ms_();
    job.text_chars = text_chars;
    if (!options_.dir.empty()) {
        // Before the record: a record that reads queued always has its request beside it.
        std::error_code ec;
        fs::create_directories(options_.dir, ec);
        std::string save_error;
        if (!write_file_atomically(path_for(job.id, ".request"),
                                   json{{"format", kJobRequestFormat}, {"request", request}}.dump(
                                       -1, ' ', false, json::error_handler_t::replace),
                                   save_error)) {
            log_.warn("jobs", "job_save_failed", {{"job", job.id}, {"error", save_error}});
        }
    }
    persist_locked(job);
    const auto id = job.id;
    jobs_[id] = std::move(job);
    return id;
}

std::optional<JobRecord> JobStore::get(const std::string& id) {
    std::lock_guard lock(mutex_);
    evict_locked(options_.max_jobs);
    const auto it = jobs_.find(id);
    if (it == jobs_.end()) {
        return std::nullopt;
    }
    return it->second;
}

std::vector<JobRecord> JobStore::list() {
    std::lock_guard lock(mutex_);
    evict_locked(options_.max_jobs);
    std::vector<JobRecord> out;
    for (const auto& [id, job] : jobs_) {
        out.push_back(job);
        out.back().result = nlohmann::json();  // listings stay small
    }
    std::sort(out.begin(), out.end(),
              [](const JobRecord& a, const JobRecord& b) { return a.created_ms < b.created_ms; });
    return out;
}

std::vector<std::pair<std::string, std::size_t>> JobStore::counts() {
    std::lock_guard lock(mutex_);
    std::vector<std::pair<std::string, std::size_t>> out;
    for (const auto state : {JobState::queued, JobState::running, JobState::succeeded,
                             JobState::failed, JobState::cancelled, JobState::interrupted}) {
        out.emplace_back(std::string(to_string(state)),
                         static_cast<std::size_t>(std::count_if(
                             jobs_.begin(), jobs_.end(),
                             [&](const auto& entry) { return entry.second.state == state; })));
    }
    return out;
}

void JobStore::set_running(const std::string& id) {
    std::lock_guard lock(mutex_);
    const auto it = jobs_.find(id);
    if (it == jobs_.end() || it->second.state != JobState::queued) {
        return;
    }
    it->second.state = JobState::running;
    it->second.started_ms = now_ms_();
    persist_locked(it->second);
}

void JobStore::set_progress(const std::string& id, const std::vector<LevelProgress>& progress) {
    std::lock_guard lock(mutex_);
    // Not persisted: progress changes with every chunk, and a restart ends the job anyway.
    if (const auto it = jobs_.find(id); it != jobs_.end()) {
        it->second.progress = progress;
    }
}

void JobStore::save_chunk(const std::string& id, const SavedChunk& chunk) {
    std::lock_guard lock(mutex_);
    const auto it = jobs_.find(id);
    if (options_.dir.empty() || it == jobs_.end() || is_final(it->second.state)) {
        return;
    }
    const auto line = saved_chunk_line(chunk);
    std::size_t total = 0;
    for (const auto& [job, bytes] : saved_bytes_) {
        total += bytes;
    }
    auto& bytes = saved_bytes_[id];
    if (total + line.size() > options_.max_saved_bytes) {
        log_.debug("jobs", "job_chunk_not_saved",
                   {{"job", id}, {"saved_bytes", total}, {"limit", options_.max_saved_bytes}});
        return;
    }
    std::string error;
    if (!append_synced(path_for(id, ".chunks"), line, error)) {
        log_.warn("jobs", "job_save_failed", {{"job", id}, {"error", error}});
        return;
    }
    bytes += line.size();
}

void JobStore::finish(const std::string& id, JobState state, nlohmann::json result,
                      int error_status, std::string error) {
    std::lock_guard lock(mutex_);
    const auto it = jobs_.find(id);
    if (it == jobs_.end() || is_final(it->second.state)) {
        return;
    }
    auto& job = it->second;
    job.state = state;
    job.finished_ms = now_ms_();
    job.result = std::move(result);
    job.error_status = error_status;
    job.error = std::move(error);
    persist_locked(job);
    drop_work_locked(id);  // the result (or the end) is in the record now
}

bool JobStore::remove(const std::string& id) {
    std::lock_guard lock(mutex_);
    const auto it = jobs_.find(id);
    if (it == jobs_.end() || !is_final(it->second.state)) {
        return false;
    }
    unlink_locked(id);
    jobs_.erase(it);
    return true;
}

bool prepare_job_dir(const std::string& dir, std::string& error) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) {
        error = fmt::format("cannot create {}: {}", dir, ec.message());
        return false;
    }
    // A real write, not access(): it also catches read-only mounts, a full disk's inode
    // table and ACLs, and it means the same thing for root (who passes any access check).
    const auto probe = (fs::path(dir) / fmt::format(".write-check-{}", ::getpid())).string();
    const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        error = fmt::format("cannot write in {}: {}", dir, std::strerror(errno));
        return false;
    }
    ::close(fd);
    ::unlink(probe.c_str());
    return true;
}

void JobStore::persist_locked(const JobRecord& job) {
    if (options_.dir.empty()) {
        return;
    }
    std::error_code ec;
    fs::create_directories(options_.dir, ec);
    std::string error;
    if (ec) {
        error = fmt::format("create {}: {}", options_.dir, ec.message());
    } else {
        auto doc = job_to_json(job);
        doc["format"] = kJobRecordFormat;  // persisted only: the API view does not need it
        if (write_file_atomically(path_for(job.id),
                                  doc.dump(-1, ' ', false, json::error_handler_t::replace),
                                  error)) {
            return;
        }
    }
    // The job goes on in memory; only its survival of a restart is lost.
    log_.warn("jobs", "job_save_failed", {{"job", job.id}, {"error", error}});
}

void JobStore::unlink_locked(const std::string& id) {
    if (!options_.dir.empty()) {
        std::error_code ec;
        fs::remove(path_for(id), ec);
    }
    drop_work_locked(id);
}

void JobStore::drop_work_locked(const std::string& id) {
    saved_bytes_.erase(id);
    if (!options_.dir.empty()) {
        std::error_code ec;
        fs::remove(path_for(id, ".request"), ec);
        fs::remove(path_for(id, ".chunks"), ec);
    }
}

}  // namespace llama_pool
