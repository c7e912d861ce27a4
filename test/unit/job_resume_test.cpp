// Resumable jobs: the summarizer reuses saved chunk summaries, the store saves them and
// hands unfinished jobs back at load, and says why when it cannot.
#include <poll.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <mutex>

#include "test/support/fakes.hpp"
#include "test/support/test_process.hpp"
#include "workloads/job_runner.hpp"
#include "workloads/job_store.hpp"
#include "workloads/summarize_request.hpp"
#include "workloads/summarizer.hpp"

using namespace llama_pool;
using nlohmann::json;

namespace {

std::string numbered_text(int sentences) {
    std::string text;
    for (int i = 1; i <= sentences; ++i) {
        text += "Sentence number " + std::to_string(i) + " states one more small fact here. ";
    }
    return text;
}

SummarizeRequest request_for(std::string text) {
    SummarizeRequest r;
    r.text = std::move(text);
    r.chunking = {400, 0};
    r.levels = 6;
    r.map_prompt = default_map_prompt();
    r.reduce_prompt = default_reduce_prompt();
    return r;
}

// A model whose summary of a prompt is a short digest of it: deterministic, and shorter than
// its input so the summary converges.
struct DigestModel {
    std::atomic<int> calls{0};
    CompletionCall call() {
        return [this](const std::string& body, const std::string&, const std::set<std::string>&) {
            ++calls;
            const auto prompt = json::parse(body)["prompt"].get<std::string>();
            return CompletionReply{
                200,
                json{{"content", "digest " + chunk_hash(prompt)}, {"tokens_predicted", 4}}.dump(),
                "w0"};
        };
    }
};

}  // namespace

TEST_CASE("a summary reuses saved chunk summaries and asks only for the rest", "[jobs]") {
    test::FakeTime time;
    DigestModel model;
    const Summarizer summarizer(
        model.call(), [] { return 2; }, 1, time);
    const auto request = request_for(numbered_text(60));

    // A full run, saving every chunk summary as it completes.
    std::mutex mutex;
    std::vector<SavedChunk> saved;
    ChunkMemo record;
    record.on_done = [&](const SavedChunk& c) {
        std::lock_guard lock(mutex);
        saved.push_back(c);
    };
    CancelToken cancel;
    const auto full = summarizer.run(request, "job", cancel, {}, &record);
    REQUIRE(full.ok);
    CHECK(full.reused == 0);
    const auto full_calls = model.calls.exchange(0);
    REQUIRE(static_cast<int>(saved.size()) == full_calls);
    REQUIRE(full.levels.size() >= 2);

    // Resumed with the first level's chunks saved: only the later levels are asked for, and
    // the summary is the same.
    std::vector<SavedChunk> level_one;
    for (const auto& c : saved) {
        if (c.level == 1) {
            level_one.push_back(c);
        }
    }
    ChunkMemo resume;
    resume.saved = level_one;
    std::vector<std::vector<LevelProgress>> reports;
    CancelToken cancel2;
    const auto resumed = summarizer.run(
        request, "job", cancel2,
        [&](const std::vector<LevelProgress>& p) {
            std::lock_guard lock(mutex);
            reports.push_back(p);
        },
        &resume);
    REQUIRE(resumed.ok);
    CHECK(resumed.summary == full.summary);
    CHECK(resumed.reused == level_one.size());
    CHECK(model.calls.load() == full_calls - static_cast<int>(level_one.size()));
    CHECK(resumed.tokens_predicted == full.tokens_predicted);
    // Progress starts where the saved work left it, never at zero for a done level.
    REQUIRE_FALSE(reports.empty());
    CHECK(reports.front().at(0).done == level_one.size());
    CHECK(reports.front().at(0).total == level_one.size());

    // A saved chunk for other text (another chunking, another version) is not reused.
    model.calls = 0;
    ChunkMemo stale;
    stale.saved = level_one;
    for (auto& c : stale.saved) {
        c.input_hash = "0000000000000000";
    }
    CancelToken cancel3;
    const auto redone = summarizer.run(request, "job", cancel3, {}, &stale);
    REQUIRE(redone.ok);
    CHECK(redone.reused == 0);
    CHECK(model.calls.load() == full_calls);
    CHECK(redone.summary == full.summary);
}

TEST_CASE("a journal line round-trips and a line cut short is refused", "[jobs]") {
    const SavedChunk chunk{2, 3, 7, chunk_hash("text"), "a summary\nwith \"quotes\"", 12};
    const auto line = saved_chunk_line(chunk);
    CHECK(line.back() == '\n');
    CHECK(std::count(line.begin(), line.end(), '\n') == 1);
    SavedChunk back;
    REQUIRE(saved_chunk_from_line(line, back));
    CHECK(back.level == 2);
    CHECK(back.index == 3);
    CHECK(back.total == 7);
    CHECK(back.input_hash == chunk.input_hash);
    CHECK(back.summary == chunk.summary);
    CHECK(back.tokens == 12);
    for (std::size_t cut = 0; cut + 1 < line.size(); ++cut) {
        CHECK_FALSE(saved_chunk_from_line(line.substr(0, cut), back));
    }
    CHECK_FALSE(saved_chunk_from_line(R"({"level":1,"index":5,"total":5,"hash":"x",)"
                                      R"("summary":"s","tokens":1})",
                                      back));  // index out of range
    CHECK(chunk_hash("a") != chunk_hash("b"));
    CHECK(chunk_hash("abc").size() == 16);
}

TEST_CASE("a saved request round-trips with everything resolved", "[jobs]") {
    auto request = request_for("Some text.");
    request.topic = "the budget";
    request.sampling = {{"temperature", 0.2}, {"model", "m"}};
    request.n_predict = 77;
    SummarizeRequest back;
    std::string error;
    REQUIRE(request_from_json(request_to_json(request), back, error));
    CHECK(back.text == request.text);
    CHECK(back.topic == "the budget");
    CHECK(back.chunking.max_chars == 400);
    CHECK(back.chunking.overlap == 0);
    CHECK(back.levels == 6);
    CHECK(back.map_prompt == request.map_prompt);
    CHECK(back.reduce_prompt == request.reduce_prompt);
    CHECK(back.sampling == request.sampling);
    CHECK(back.n_predict == 77);
    auto broken = request_to_json(request);
    broken.erase("text");
    CHECK_FALSE(request_from_json(broken, back, error));
    CHECK(error.find("incomplete") != std::string::npos);
}

TEST_CASE("a job cut short resumes from its record with its chunks and progress", "[jobs]") {
    Logger log(LogFormat::text, LogLevel::error);
    test::TempDir dir;
    std::int64_t now = 1'000;
    const JobStoreOptions options{10, 3600, dir.path()};
    std::string error;
    std::string id, cancelled_id, done_id;
    {
        JobStore store(
            options, [&] { return now; }, log);
        id = *store.add(5000, json{{"text", "the request"}}, error);
        cancelled_id = *store.add(10, json{{"text", "x"}}, error);
        done_id = *store.add(10, json{{"text", "y"}}, error);
        store.set_running(id);
        store.save_chunk(id, {1, 0, 4, "h0", "first", 3});
        store.save_chunk(id, {1, 2, 4, "h2", "third", 5});
        store.finish(cancelled_id, JobState::cancelled, {}, 499, "cancelled by DELETE");
        store.finish(done_id, JobState::succeeded, json{{"summary", "s"}}, 0, {});
        CHECK(std::filesystem::exists(dir.file(id + ".request")));
        CHECK(std::filesystem::exists(dir.file(id + ".chunks")));
        // Work of ended jobs is dropped with their end.
        CHECK_FALSE(std::filesystem::exists(dir.file(cancelled_id + ".request")));
        CHECK_FALSE(std::filesystem::exists(dir.file(done_id + ".request")));
    }  // no stop, no finish: as after SIGKILL
    // A crash while appending leaves a torn last line.
    std::ofstream(dir.file(id + ".chunks"), std::ios::app) << R"({"level":1,"index":1,"tot)";
    now += 1000;
    {
        JobStore store(
            options, [&] { return now; }, log);
        CHECK(store.load() == 3);
        auto resumable = store.take_resumable();
        REQUIRE(resumable.size() == 1);
        CHECK(resumable[0].id == id);
        CHECK(resumable[0].request["text"] == "the request");
        REQUIRE(resumable[0].saved.size() == 2);
        CHECK(resumable[0].saved[1].summary == "third");
        const auto job = store.get(id);
        REQUIRE(job);
        CHECK(job->state == JobState::queued);
        CHECK(job->resumes == 1);
        CHECK(job->reused_chunks == 2);
        REQUIRE(job->progress.size() == 1);
        CHECK(job->progress[0].done == 2);
        CHECK(job->progress[0].total == 4);
        const auto view = job_to_json(*job);
        CHECK(view["resumed"]["times"] == 1);
        CHECK(view["resumed"]["reused_chunks"] == 2);
        CHECK(view["progress"]["chunks_done"] == 2);
        CHECK(store.get(cancelled_id)->state == JobState::cancelled);
        CHECK(store.get(done_id)->state == JobState::succeeded);
        // The torn line is gone, so the next append starts a line of its own.
        store.set_running(id);
        store.save_chunk(id, {1, 1, 4, "h1", "second", 4});
    }
    now += 1000;
    {
        JobStore store(
            options, [&] { return now; }, log);
        CHECK(store.load() == 3);
        const auto resumable = store.take_resumable();
        REQUIRE(resumable.size() == 1);
        CHECK(resumable[0].saved.size() == 3);
        CHECK(store.get(id)->resumes == 2);
        CHECK(store.get(id)->reused_chunks == 3);
        store.finish(id, JobState::succeeded, json{{"summary", "done"}}, 0, {});
        CHECK_FALSE(std::filesystem::exists(dir.file(id + ".chunks")));
        CHECK_FALSE(std::filesystem::exists(dir.file(id + ".request")));
        CHECK(job_to_json(*store.get(id))["resumed"]["times"] == 2);
    }
}

TEST_CASE("a job that cannot be resumed ends interrupted and says why", "[jobs]") {
    Logger log(LogFormat::text, LogLevel::error);
    test::TempDir dir;
    std::int64_t now = 1'000;
    const JobStoreOptions options{10, 3600, dir.path()};
    std::string error;
    std::string no_request, bad_request, new_request, new_record;
    {
        JobStore store(
            options, [&] { return now; }, log);
        no_request = *store.add(1, json{{"text", "a"}}, error);
        bad_request = *store.add(1, json{{"text", "b"}}, error);
        new_request = *store.add(1, json{{"text", "c"}}, error);
        new_record = *store.add(1, json{{"text", "d"}}, error);
    }
    std::filesystem::remove(dir.file(no_request + ".request"));
    std::ofstream(dir.file(bad_request + ".request")) << "{\"format\": 1, \"requ";
    std::ofstream(dir.file(new_request + ".request")) << R"({"format": 99, "request": {}})";
    {
        const auto path = dir.file(new_record + ".json");
        std::ifstream in(path);
        auto doc = json::parse(in);
        doc["format"] = 99;
        std::ofstream(path) << doc.dump();
    }
    JobStore store(
        options, [&] { return now; }, log);
    CHECK(store.load() == 4);
    CHECK(store.take_resumable().empty());
    const auto reason = [&](const std::string& id) {
        const auto job = store.get(id);
        REQUIRE(job);
        CHECK(job->state == JobState::interrupted);
        CHECK(job->error.find("cannot be resumed") != std::string::npos);
        CHECK(job->error.find("submit it again") != std::string::npos);
        return job->error;
    };
    CHECK(reason(no_request).find("not saved") != std::string::npos);
    CHECK(reason(bad_request).find("corrupt") != std::string::npos);
    CHECK(reason(new_request).find("format 99") != std::string::npos);
    CHECK(reason(new_record).find("record has format 99") != std::string::npos);
    CHECK_FALSE(std::filesystem::exists(dir.file(bad_request + ".request")));
}

TEST_CASE("saved work is bounded by the store's limit", "[jobs]") {
    Logger log(LogFormat::text, LogLevel::error);
    test::TempDir dir;
    JobStoreOptions options{10, 3600, dir.path()};
    options.max_saved_bytes = 300;
    std::string error;
    JobStore store(
        options, [] { return std::int64_t{1}; }, log);
    const auto id = *store.add(1, json{{"text", "a"}}, error);
    store.set_running(id);
    for (std::size_t i = 0; i < 10; ++i) {
        store.save_chunk(id, {1, i, 10, "hash", std::string(50, 'x'), 1});
    }
    CHECK(std::filesystem::file_size(dir.file(id + ".chunks")) <= 300);
    CHECK(std::filesystem::file_size(dir.file(id + ".chunks")) > 0);
}

TEST_CASE("stopping a runner over a durable store leaves its jobs to be resumed", "[jobs]") {
    Logger log(LogFormat::text, LogLevel::error);
    test::TempDir dir;
    JobStore store(
        {10, 3600, dir.path()}, [] { return std::int64_t{1}; }, log);
    std::atomic<bool> started{false};
    const JobRunner::Work work = [&](const SummarizeRequest&, const std::string&,
                                     CancelToken& cancel, const Summarizer::ProgressFn&,
                                     const ChunkMemo& memo) {
        memo.on_done({1, 0, 2, "h", "half", 1});
        started = true;
        // Blocks until stop() cancels it, like a summary waiting on its workers.
        pollfd wake{cancel.fd(), POLLIN, 0};
        while (!cancel.cancelled()) {
            ::poll(&wake, 1, -1);
        }
        SummaryResult r;
        r.status = 499;
        return r;
    };
    JobRunner runner(
        store, work, [](const SummaryResult&) { return json(); }, 1);
    std::string error;
    const auto running = runner.submit(request_for("running"), error);
    const auto queued = runner.submit(request_for("queued"), error);
    REQUIRE(running);
    REQUIRE(queued);
    REQUIRE(test::wait_until([&] { return started.load(); }, std::chrono::seconds(10),
                             std::chrono::milliseconds(2)));
    runner.stop();
    CHECK(store.get(*running)->state == JobState::running);
    CHECK(store.get(*queued)->state == JobState::queued);

    JobStore next(
        {10, 3600, dir.path()}, [] { return std::int64_t{2}; }, log);
    CHECK(next.load() == 2);
    const auto resumable = next.take_resumable();
    REQUIRE(resumable.size() == 2);
    CHECK(resumable[0].saved.size() + resumable[1].saved.size() == 1);
    SummarizeRequest back;
    REQUIRE(request_from_json(resumable[0].request, back, error));
    CHECK((back.text == "running" || back.text == "queued"));
}
