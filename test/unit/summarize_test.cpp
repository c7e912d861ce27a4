#include <atomic>
#include <catch2/catch.hpp>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "test/support/fakes.hpp"
#include "test/support/test_process.hpp"
#include "workloads/job_runner.hpp"
#include "workloads/job_store.hpp"
#include "workloads/summarize_request.hpp"
#include "workloads/summarizer.hpp"

using namespace llama_pool;
using nlohmann::json;

namespace {

// A document of numbered sentences; each carries a tag like [s12] that the fake model below
// echoes, so the final summary shows which sentences reached it and in what order.
std::string tagged_text(int sentences) {
    std::string text;
    for (int i = 1; i <= sentences; ++i) {
        text += "Sentence [s" + std::to_string(i) + "] says something quite unremarkable. ";
    }
    return text;
}

// The tags in `text`, consecutive repeats (from chunk overlaps) collapsed. Scanned by hand:
// this runs on the summarizer's threads, and std::regex's locale set-up races in libstdc++
// (ThreadSanitizer reports it).
std::vector<std::string> tags_in(const std::string& text) {
    std::vector<std::string> out;
    for (auto at = text.find("[s"); at != std::string::npos; at = text.find("[s", at + 1)) {
        auto end = at + 2;
        while (end < text.size() && text[end] >= '0' && text[end] <= '9') {
            ++end;
        }
        if (end == at + 2 || end >= text.size() || text[end] != ']') {
            continue;
        }
        const auto tag = text.substr(at, end + 1 - at);
        if (out.empty() || out.back() != tag) {
            out.push_back(tag);
        }
    }
    return out;
}

std::string echo_tags(const std::string& prompt_body) {
    const auto prompt = json::parse(prompt_body)["prompt"].get<std::string>();
    std::string out;
    for (const auto& t : tags_in(prompt)) {
        out += t + " ";
    }
    return json{{"content", out}, {"tokens_predicted", 3}}.dump();
}

SummarizeRequest request_for(std::string text, std::size_t max_chars = 400,
                             std::size_t overlap = 60) {
    SummarizeRequest r;
    r.text = std::move(text);
    r.chunking = {max_chars, overlap};
    r.levels = 6;
    r.map_prompt = default_map_prompt();
    r.reduce_prompt = default_reduce_prompt();
    return r;
}

struct Calls {
    std::mutex mutex;
    std::vector<std::string> bodies;
    std::atomic<int> in_flight{0};
    std::atomic<int> max_in_flight{0};
    // The first call waits here until a second one runs beside it, so that overlap is
    // shown by construction, not by a sleep. Bounded: a summarizer that ran calls one at a
    // time would stop here for a moment and fail the overlap check, not hang.
    std::condition_variable overlap_cv;
    bool overlapped = false;
    void wait_for_overlap() {
        std::unique_lock lock(mutex);
        if (in_flight.load() >= 2) {
            overlapped = true;
            overlap_cv.notify_all();
        }
        overlap_cv.wait_for(lock, std::chrono::seconds(10), [&] { return overlapped; });
    }
};

}  // namespace

TEST_CASE("summarize requests are validated with reasons", "[summarize]") {
    const SummarizeDefaults defaults;
    SummarizeRequest out;
    std::string error;
    const auto parse = [&](const json& body, bool job = false) {
        error.clear();
        return parse_summarize_request(body, defaults, job, out, error);
    };
    CHECK(parse({{"text", "Hello there."}}));
    CHECK(out.chunking.max_chars == 2048);
    CHECK(out.chunking.overlap == 200);
    CHECK_FALSE(parse(json::array()));
    CHECK_FALSE(parse({{"text", "   \n"}}));
    CHECK(error.find("empty") != std::string::npos);
    CHECK_FALSE(parse({{"text", 12}}));
    CHECK(error.find("\"text\"") != std::string::npos);
    CHECK_FALSE(parse({{"text", "x"}, {"max_chunk_chars", 10}}));
    CHECK(error.find("max_chunk_chars") != std::string::npos);
    CHECK_FALSE(parse({{"text", "x"}, {"max_chunk_chars", "big"}}));
    CHECK_FALSE(parse({{"text", "x"}, {"max_chunk_chars", 1000}, {"overlap", 600}}));
    CHECK(error.find("half") != std::string::npos);
    CHECK_FALSE(parse({{"text", "x"}, {"levels", 0}}));
    CHECK_FALSE(parse({{"text", "x"}, {"levels", 11}}));
    CHECK_FALSE(parse({{"text", "x"}, {"temperature", "hot"}}));
    CHECK(error.find("temperature") != std::string::npos);
    CHECK_FALSE(parse({{"text", "x"}, {"temprature", 0.2}}));
    CHECK(error.find("unknown field \"temprature\"") != std::string::npos);
    CHECK_FALSE(parse({{"text", "x"}, {"stop", {1, 2}}}));
    CHECK_FALSE(parse({{"text", "x"}, {"prompts", {{"map", "no placeholder"}}}}));
    CHECK(error.find("{text}") != std::string::npos);
    CHECK_FALSE(parse({{"text", "x"}, {"prompts", {{"mop", "{text}"}}}}));
    CHECK_FALSE(parse({{"text", "x"}, {"n_predict", 0}}));
    CHECK_FALSE(parse({{"text", "x"}, {"type", "summarize"}}));  // only jobs have a type
    CHECK(parse({{"text", "x"}, {"type", "summarize"}}, true));
    CHECK_FALSE(parse({{"text", "x"}, {"type", "translate"}}, true));
    CHECK_FALSE(parse({{"text", "x"}}, true));

    SummarizeDefaults small;
    small.max_text_chars = 10;
    CHECK_FALSE(parse_summarize_request({{"text", "eleven char"}}, small, false, out, error));
    CHECK(error.find("max_text_chars") != std::string::npos);

    REQUIRE(parse({{"text", "x"},
                   {"temperature", 0},
                   {"seed", 7},
                   {"stop", {"\n\n"}},
                   {"max_tokens", 50},
                   {"prompts", {{"map", "S: {text}"}}}}));
    CHECK(out.sampling == json{{"temperature", 0}, {"seed", 7}, {"stop", {"\n\n"}}});
    CHECK(out.n_predict == 50);
    CHECK(out.map_prompt == "S: {text}");
    CHECK(out.reduce_prompt == default_reduce_prompt());
}

TEST_CASE("prompts are rendered with the text and the topic", "[summarize]") {
    CHECK(render_prompt("A {topic}: {text}!", "body", "") == "A its main points: body!");
    CHECK(render_prompt("A {topic}: {text}!", "body", "cats") == "A cats: body!");
    // A placeholder inside the text is not expanded again.
    CHECK(render_prompt("{text}", "{topic}", "cats") == "{topic}");
    CHECK(summary_tokens_for(2048) == 153);
    CHECK(summary_tokens_for(10) == 32);
}

TEST_CASE("the summarizer maps in parallel, keeps order and reduces to one chunk", "[summarize]") {
    Calls calls;
    const CompletionCall call = [&](const std::string& body, const std::string&,
                                    const std::set<std::string>&) {
        const int now = ++calls.in_flight;
        int seen = calls.max_in_flight.load();
        while (now > seen && !calls.max_in_flight.compare_exchange_weak(seen, now)) {
        }
        calls.wait_for_overlap();
        {
            std::lock_guard lock(calls.mutex);
            calls.bodies.push_back(body);
        }
        --calls.in_flight;
        return CompletionReply{200, echo_tags(body), "w0"};
    };
    test::FakeTime time;
    const Summarizer summarizer(
        call, [] { return 4; }, 3, time);
    CancelToken cancel;
    std::vector<std::vector<LevelProgress>> seen;
    const auto text = tagged_text(120);
    const auto result =
        summarizer.run(request_for(text, 1500, 200), "req", cancel,
                       [&](const std::vector<LevelProgress>& p) { seen.push_back(p); });
    REQUIRE(result.ok);
    CHECK(result.converged);
    // Every sentence's tag reached the final summary, in the document's order (overlaps may
    // repeat a few tags; a repeat never goes past what came before it).
    std::vector<int> order;
    for (const auto& tag : tags_in(result.summary)) {
        const int n = std::stoi(tag.substr(2));
        if (order.empty() || n > order.back()) {
            order.push_back(n);
        }
    }
    REQUIRE(order.size() == 120);
    CHECK(order.front() == 1);
    CHECK(order.back() == 120);
    REQUIRE(result.levels.size() >= 2);
    CHECK(result.levels[0].chunks > 4);
    CHECK(result.levels.back().chunks == 1);
    CHECK(calls.max_in_flight.load() > 1);
    CHECK(calls.max_in_flight.load() <= 4);
    CHECK(result.completions == calls.bodies.size());
    CHECK(result.tokens_predicted == static_cast<long long>(3 * calls.bodies.size()));
    // Progress counted every chunk of every level, ending complete.
    REQUIRE(!seen.empty());
    for (const auto& level : seen.back()) {
        CHECK(level.done == level.total);
    }
    // Level 1 used the map prompt with a token budget; later levels the reduce prompt.
    const auto first = json::parse(calls.bodies.front());
    CHECK(first["stream"] == false);
    CHECK(first["n_predict"].get<int>() >= 32);
}

TEST_CASE("a chunk that fails with a server error is retried elsewhere", "[summarize]") {
    std::mutex mutex;
    std::vector<std::set<std::string>> avoids;
    int failures_left = 2;
    const CompletionCall call = [&](const std::string& body, const std::string&,
                                    const std::set<std::string>& avoid) {
        std::lock_guard lock(mutex);
        avoids.push_back(avoid);
        if (failures_left > 0) {
            --failures_left;
            return CompletionReply{500, R"({"error":{"code":500,"message":"boom"}})", "bad"};
        }
        return CompletionReply{200, echo_tags(body), "good"};
    };
    test::FakeTime time;
    const Summarizer summarizer(
        call, [] { return 1; }, 3, time);
    CancelToken cancel;
    const auto result = summarizer.run(request_for(tagged_text(3), 2000, 0), "req", cancel);
    REQUIRE(result.ok);
    CHECK(result.retries == 2);
    REQUIRE(avoids.size() == 3);
    CHECK(avoids[1].contains("bad"));  // the retry steers away from the failing worker
    CHECK(tags_in(result.summary).size() == 3);
}

TEST_CASE("a chunk that keeps failing fails the summary and cancels the rest", "[summarize]") {
    std::atomic<int> calls{0};
    const CompletionCall call = [&](const std::string&, const std::string&,
                                    const std::set<std::string>&) {
        ++calls;
        return CompletionReply{502, R"({"error":{"code":502,"message":"down"}})", "w1"};
    };
    test::FakeTime time;
    const Summarizer summarizer(
        call, [] { return 1; }, 3, time);
    CancelToken cancel;
    const auto result = summarizer.run(request_for(tagged_text(60)), "req", cancel);
    CHECK_FALSE(result.ok);
    CHECK(result.status == 502);
    CHECK(result.error.find("level 1 chunk 1 of") != std::string::npos);
    CHECK(result.error.find("down") != std::string::npos);
    CHECK(calls.load() == 3);  // three attempts at the first chunk, nothing after it
    CHECK(cancel.cancelled());
}

TEST_CASE("a worker's 400 is not retried and maps to 400", "[summarize]") {
    std::atomic<int> calls{0};
    const CompletionCall call = [&](const std::string&, const std::string&,
                                    const std::set<std::string>&) {
        ++calls;
        return CompletionReply{
            400, R"({"error":{"code":400,"message":"the request exceeds the context size"}})",
            "w0"};
    };
    test::FakeTime time;
    const Summarizer summarizer(
        call, [] { return 1; }, 3, time);
    CancelToken cancel;
    const auto result = summarizer.run(request_for("Short text."), "req", cancel);
    CHECK(result.status == 400);
    CHECK(result.error.find("context size") != std::string::npos);
    CHECK(calls.load() == 1);
}

TEST_CASE("cancelling stops the summary between calls", "[summarize]") {
    CancelToken cancel;
    std::atomic<int> calls{0};
    const CompletionCall call = [&](const std::string& body, const std::string&,
                                    const std::set<std::string>&) {
        if (++calls == 3) {
            cancel.cancel();
        }
        return CompletionReply{200, echo_tags(body), "w0"};
    };
    test::FakeTime time;
    const Summarizer summarizer(
        call, [] { return 1; }, 3, time);
    const auto result = summarizer.run(request_for(tagged_text(100)), "req", cancel);
    CHECK_FALSE(result.ok);
    CHECK(result.status == 499);
    CHECK(calls.load() == 3);
}

TEST_CASE("when the levels run out the joined summaries are returned, unconverged", "[summarize]") {
    // A model that never shortens anything.
    const CompletionCall call = [&](const std::string& body, const std::string&,
                                    const std::set<std::string>&) {
        (void)body;
        return CompletionReply{200, json{{"content", std::string(300, 'z')}}.dump(), "w0"};
    };
    test::FakeTime time;
    const Summarizer summarizer(
        call, [] { return 2; }, 1, time);
    CancelToken cancel;
    auto request = request_for(tagged_text(40), 400, 0);
    request.levels = 2;
    const auto result = summarizer.run(request, "req", cancel);
    REQUIRE(result.ok);
    CHECK_FALSE(result.converged);
    CHECK(result.levels.size() == 2);
    CHECK(result.summary.size() > 400);
}

TEST_CASE("job ids are unguessable and checked for shape", "[jobs]") {
    const auto a = new_job_id();
    const auto b = new_job_id();
    CHECK(a != b);
    CHECK(valid_job_id(a));
    CHECK_FALSE(valid_job_id("job-../../etc/passwd"));
    CHECK_FALSE(valid_job_id(""));
    CHECK_FALSE(valid_job_id(a + "0"));
}

TEST_CASE("the job store bounds count and age and persists across restarts", "[jobs]") {
    const test::TempDir tmp;
    const std::filesystem::path dir(tmp.path());
    std::int64_t now = 1'000'000;
    Logger log(LogFormat::text, LogLevel::error);
    JobStoreOptions options{3, 60, dir.string()};
    std::string error;
    std::string done_id, running_id, queued_id;
    {
        JobStore store(
            options, [&] { return now; }, log);
        CHECK(store.load() == 0);
        // A millisecond apart: resumed jobs are ordered by submission time, which equal times
        // would leave to the order of the files on disk.
        done_id = *store.add(100, json{{"text", "a"}}, error);
        ++now;
        running_id = *store.add(200, json{{"text", "b"}}, error);
        ++now;
        queued_id = *store.add(300, json{{"text", "c"}}, error);
        store.set_running(done_id);
        store.set_progress(done_id, {{1, 4, 4}, {2, 1, 1}});
        store.finish(done_id, JobState::succeeded, json{{"summary", "short"}}, 0, {});
        store.set_running(running_id);
        // Full of unfinished jobs but one: a fourth evicts the finished one.
        now += 1000;
        const auto fourth = store.add(10, json{{"text", "d"}}, error);
        REQUIRE(fourth);
        CHECK_FALSE(store.get(done_id));
        CHECK_FALSE(std::filesystem::exists(dir / (done_id + ".json")));
        // Now every job is unfinished: a fifth is refused, with the reason.
        CHECK_FALSE(store.add(10, json{{"text", "e"}}, error));
        CHECK(error.find("jobs.max_jobs") != std::string::npos);
        store.finish(*fourth, JobState::succeeded, json{{"summary", "kept"}}, 0, {});
        done_id = *fourth;
    }
    // A new process: the finished job is back with its result; the unfinished ones are
    // queued again with their saved requests, to be resumed.
    now += 1000;
    {
        JobStore store(
            options, [&] { return now; }, log);
        CHECK(store.load() == 3);
        const auto done = store.get(done_id);
        REQUIRE(done);
        CHECK(done->state == JobState::succeeded);
        CHECK(done->result["summary"] == "kept");
        const auto resumable = store.take_resumable();
        REQUIRE(resumable.size() == 2);
        CHECK(resumable[0].id == running_id);  // in the order they were submitted
        CHECK(resumable[0].request["text"] == "b");
        CHECK(resumable[1].id == queued_id);
        CHECK(store.take_resumable().empty());
        for (const auto& id : {running_id, queued_id}) {
            const auto job = store.get(id);
            REQUIRE(job);
            CHECK(job->state == JobState::queued);
            CHECK(job->resumes == 1);
            store.finish(id, JobState::cancelled, {}, 499, "cancelled by DELETE");
        }
        // Finished jobs expire after max_age, their files with them.
        now += 61'000;
        CHECK_FALSE(store.get(done_id));
        CHECK(store.list().empty());
        CHECK(std::filesystem::is_empty(dir));
    }
}

TEST_CASE("an unreadable job file reads interrupted, a leftover temporary is removed", "[jobs]") {
    const test::TempDir tmp;
    const std::filesystem::path dir(tmp.path());
    std::filesystem::create_directories(dir);
    {
        std::ofstream(dir / "job-000000000000000000000000.json") << "{not json";
        std::ofstream(dir / "job-000000000000000000000001.json.tmp") << "{}";
        std::ofstream(dir / "not-a-job.json") << "{not json";
    }
    Logger log(LogFormat::text, LogLevel::error);
    JobStore store(
        {10, 60, dir.string()}, [] { return std::int64_t{5}; }, log);
    CHECK(store.load() == 1);
    CHECK_FALSE(std::filesystem::exists(dir / "job-000000000000000000000001.json.tmp"));
    const auto job = store.get("job-000000000000000000000000");
    REQUIRE(job);
    CHECK(job->state == JobState::interrupted);
    CHECK(job->error.find("could not be read") != std::string::npos);
    CHECK(store.take_resumable().empty());
}

TEST_CASE("the job runner runs, reports progress, cancels and interrupts", "[jobs]") {
    Logger log(LogFormat::text, LogLevel::error);
    std::int64_t now = 1;
    JobStore store(
        {10, 3600, ""}, [&] { return now; }, log);
    std::mutex mutex;
    std::condition_variable cv;
    bool release = false;
    const JobRunner::Work work = [&](const SummarizeRequest& request, const std::string&,
                                     CancelToken& cancel, const Summarizer::ProgressFn& progress,
                                     const ChunkMemo&) {
        progress({{1, 2, 1}});
        std::unique_lock lock(mutex);
        // Blocks until released or cancelled, like a summary waiting on its workers.
        while (!release && !cancel.cancelled()) {
            cv.wait_for(lock, std::chrono::milliseconds(5));
        }
        SummaryResult r;
        r.ok = !cancel.cancelled();
        r.status = r.ok ? 200 : 499;
        r.summary = "summary of " + request.text;
        return r;
    };
    JobRunner runner(
        store, work,
        [](const SummaryResult& r) {
            return json{{"summary", r.summary}};
        },
        1);
    std::string error;
    auto first = runner.submit(request_for("first"), error);
    auto second = runner.submit(request_for("second"), error);
    REQUIRE(first);
    REQUIRE(second);
    // The first runs (concurrency 1), the second waits; progress shows.
    REQUIRE(test::wait_until([&] { return !store.get(*first)->progress.empty(); },
                             std::chrono::seconds(10), std::chrono::milliseconds(2)));
    CHECK(store.get(*first)->state == JobState::running);
    CHECK(store.get(*first)->progress.at(0).done == 1);
    CHECK(store.get(*second)->state == JobState::queued);
    // Cancelling the queued one is immediate; cancelling the running one waits for it.
    CHECK(runner.cancel(*second, Clock::now() + seconds(5)) == JobRunner::CancelResult::cancelled);
    CHECK(store.get(*second)->state == JobState::cancelled);
    CHECK(runner.cancel(*first, Clock::now() + seconds(5)) == JobRunner::CancelResult::cancelled);
    CHECK(store.get(*first)->state == JobState::cancelled);
    // A finished job is removed by DELETE; an unknown one is unknown.
    CHECK(runner.cancel(*first, Clock::now()) == JobRunner::CancelResult::removed);
    CHECK(runner.cancel(*first, Clock::now()) == JobRunner::CancelResult::unknown);

    const auto third = runner.submit(request_for("third"), error);
    {
        std::lock_guard lock(mutex);
        release = true;
    }
    REQUIRE(test::wait_until([&] { return store.get(*third)->state == JobState::succeeded; },
                             std::chrono::seconds(10), std::chrono::milliseconds(2)));
    CHECK(store.get(*third)->result["summary"] == "summary of third");

    // Stopping interrupts what is still queued or running.
    {
        std::lock_guard lock(mutex);
        release = false;
    }
    const auto fourth = runner.submit(request_for("fourth"), error);
    const auto fifth = runner.submit(request_for("fifth"), error);
    runner.stop();
    CHECK(store.get(*fourth)->state == JobState::interrupted);
    CHECK(store.get(*fifth)->state == JobState::interrupted);
    CHECK_FALSE(runner.submit(request_for("late"), error));
}

TEST_CASE("a round that does not shorten the text ends the summary", "[summarize]") {
    std::atomic<int> calls{0};
    const CompletionCall call = [&](const std::string&, const std::string&,
                                    const std::set<std::string>&) {
        ++calls;
        return CompletionReply{200, json{{"content", std::string(500, 'y')}}.dump(), "w0"};
    };
    test::FakeTime time;
    const Summarizer summarizer(
        call, [] { return 2; }, 1, time);
    CancelToken cancel;
    const auto result = summarizer.run(request_for(tagged_text(40), 400, 0), "req", cancel);
    REQUIRE(result.ok);
    CHECK_FALSE(result.converged);
    CHECK(result.levels.size() == 1);
    CHECK(static_cast<std::size_t>(calls.load()) == result.levels[0].chunks);
}
