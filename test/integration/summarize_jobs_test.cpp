// /v1/summarize and /v1/jobs through a running pool of fake workers: fan-out, order,
// retries, progress, cancellation and restart persistence.
#include <signal.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "test/support/pool_fixture.hpp"

using namespace llama_pool::test;
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

std::string tagged_text(int sentences) {
    std::string text;
    for (int i = 1; i <= sentences; ++i) {
        text += "Sentence [s" + std::to_string(i) + "] reports one more fact about the case. ";
    }
    return text;
}

// The sentence numbers in `text` in order, repeats from chunk overlaps skipped.
std::vector<int> tag_order(const std::string& text) {
    std::vector<int> order;
    const std::regex tag("\\[s([0-9]+)\\]");
    for (auto it = std::sregex_iterator(text.begin(), text.end(), tag);
         it != std::sregex_iterator(); ++it) {
        const int n = std::stoi((*it)[1].str());
        if (order.empty() || n > order.back()) {
            order.push_back(n);
        }
    }
    return order;
}

json get_json(PoolProcess& pool, const std::string& path) {
    const auto r = pool.client(10s).Get(path);
    REQUIRE(r);
    INFO(r->body);
    REQUIRE(r->status == 200);
    return json::parse(r->body);
}

// Polls a job until it reaches a final state.
json wait_for_job(PoolProcess& pool, const std::string& id, std::chrono::seconds timeout) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    json job;
    while (std::chrono::steady_clock::now() < until) {
        job = get_json(pool, "/v1/jobs/" + id);
        const auto state = job["state"].get<std::string>();
        if (state != "queued" && state != "running") {
            return job;
        }
        std::this_thread::sleep_for(50ms);
    }
    return job;
}

}  // namespace

TEST_CASE("summarize fans chunks out over the workers and keeps the document's order",
          "[integration][summarize]") {
    PoolProcess pool(fake_pool_args(2, {"--parallel", "2"}, {"--echo-tags", "--latency-ms", "30"}));
    REQUIRE(pool.wait_ready(2, 20s));
    // The fake echoes tags and never shortens; chunks of 2000 make the second level fit one.
    const json body = {{"text", tagged_text(200)}, {"max_chunk_chars", 2000}, {"overlap", 100}};
    const auto r = pool.client(60s).Post("/v1/summarize", body.dump(), "application/json");
    REQUIRE(r);
    INFO(r->body);
    REQUIRE(r->status == 200);
    CHECK(r->get_header_value("X-Request-Id").size() > 0);
    const auto reply = json::parse(r->body);
    CHECK(reply["converged"] == true);
    const auto order = tag_order(reply["summary"].get<std::string>());
    REQUIRE(order.size() == 200);
    CHECK(order.back() == 200);
    REQUIRE(reply["levels"].size() >= 2);
    CHECK(reply["levels"][0]["chunks"].get<int>() >= 5);
    CHECK(reply["levels"].back()["chunks"] == 1);
    // Both workers took chunks: the map ran in parallel across the pool.
    const auto metrics = pool.client(10s).Get("/metrics");
    REQUIRE(metrics);
    const auto status = pool.status();
    for (const auto& w : status["workers"]) {
        const std::regex ok("llama_pool_upstream_requests_total\\{worker=\"" +
                            w["id"].get<std::string>() + "\",outcome=\"ok\"\\} ([0-9]+)");
        std::smatch m;
        REQUIRE(std::regex_search(metrics->body, m, ok));
        CHECK(std::stoi(m[1].str()) >= 1);
    }
}

TEST_CASE("a chunk that fails on one worker is retried on another", "[integration][summarize]") {
    TempDir dir;
    const auto faults = dir.file("faults");
    std::ofstream(faults) << "";
    PoolProcess pool(
        fake_pool_args(2, {"--breaker-failures", "100"}, {"--echo-tags", "--fault-file", faults}));
    REQUIRE(pool.wait_ready(2, 20s));
    std::ofstream(faults) << pool.status()["workers"][0]["port"].get<int>() << " fail 500\n";
    const json body = {{"text", tagged_text(60)}, {"max_chunk_chars", 800}, {"overlap", 0}};
    const auto r = pool.client(60s).Post("/v1/summarize", body.dump(), "application/json");
    REQUIRE(r);
    INFO(r->body);
    REQUIRE(r->status == 200);
    const auto reply = json::parse(r->body);
    CHECK(tag_order(reply["summary"].get<std::string>()).size() == 60);
    // The broken worker was tried and its chunks were served elsewhere (by the relay's own
    // second opinion on a 500, or the summary's retry when that ran out).
    const auto metrics = pool.client(10s).Get("/metrics");
    REQUIRE(metrics);
    CHECK(std::regex_search(metrics->body,
                            std::regex("llama_pool_upstream_requests_total\\{worker=\"0\","
                                       "outcome=\"status_5xx[a-z_]*\"\\} [1-9]")));
    std::remove(faults.c_str());
}

TEST_CASE("bad summarize and job requests get 400 with the reason", "[integration][summarize]") {
    PoolProcess pool(fake_pool_args(1));
    REQUIRE(pool.wait_ready(1, 20s));
    auto client = pool.client(10s);
    const std::vector<std::pair<std::string, std::string>> cases = {
        {R"({"text":""})", "empty"},
        {R"({"text":"x","max_chunk_chars":5})", "max_chunk_chars"},
        {R"({"text":"x","levels":"many"})", "levels"},
        {R"({"text":"x","temperature":"hot"})", "temperature"},
        {R"({"text":"x","colour":"red"})", "unknown field"},
        {R"({"text":)", "not valid JSON"},
    };
    for (const auto& [body, reason] : cases) {
        INFO(body);
        const auto r = client.Post("/v1/summarize", body, "application/json");
        REQUIRE(r);
        CHECK(r->status == 400);
        CHECK(r->body.find(reason) != std::string::npos);
    }
    const auto job = client.Post("/v1/jobs", R"({"text":"x"})", "application/json");
    REQUIRE(job);
    CHECK(job->status == 400);
    CHECK(job->body.find("\"type\"") != std::string::npos);
    CHECK(client.Get("/v1/summarize")->status == 405);
    CHECK(client.Get("/v1/jobs/job-000000000000000000000000")->status == 404);
    CHECK(client.Get("/v1/jobs/../pool/status")->status != 200);
}

TEST_CASE("a job reports progress, finishes, and survives a restart of the pool",
          "[integration][jobs]") {
    const TempDir data;
    TempDir dir;
    const auto faults = dir.file("faults");
    std::ofstream(faults) << "";
    const auto args = fake_pool_args(2, {"--data-dir", data.path()},
                                     {"--echo-tags", "--latency-ms", "20", "--fault-file", faults});
    std::string done_id;
    std::string running_id;
    {
        PoolProcess pool(args);
        REQUIRE(pool.wait_ready(2, 20s));
        const auto port_of = [&](int i) { return pool.status()["workers"][i]["port"].get<int>(); };
        // Worker 1 holds its chunks until released, so the job is surely seen half done.
        std::ofstream(faults) << port_of(1) << " hold\n";
        const json body = {{"type", "summarize"},
                           {"text", tagged_text(150)},
                           {"max_chunk_chars", 800},
                           {"overlap", 80}};
        const auto r = pool.client(10s).Post("/v1/jobs", body.dump(), "application/json");
        REQUIRE(r);
        REQUIRE(r->status == 202);
        const auto accepted = json::parse(r->body);
        done_id = accepted["id"].get<std::string>();
        CHECK(r->get_header_value("Location") == "/v1/jobs/" + done_id);
        CHECK(accepted["status_url"] == "/v1/jobs/" + done_id);
        // Progress is visible while it runs.
        const bool saw_partial = wait_until(
            [&] {
                const auto job = get_json(pool, "/v1/jobs/" + done_id);
                const auto& levels = job["progress"]["levels"];
                return job["state"] == "running" && !levels.empty() &&
                       levels[0]["done"].get<int>() > 0 &&
                       levels[0]["done"].get<int>() < levels[0]["total"].get<int>();
            },
            30s);
        std::ofstream(faults) << "";
        CHECK(saw_partial);
        const auto done = wait_for_job(pool, done_id, 60s);
        INFO(done.dump());
        REQUIRE(done["state"] == "succeeded");
        CHECK(tag_order(done["result"]["summary"].get<std::string>()).size() == 150);
        CHECK(done["progress"]["levels"][0]["done"] == done["progress"]["levels"][0]["total"]);
        const auto metrics = pool.client(10s).Get("/metrics");
        REQUIRE(metrics);
        CHECK(metrics->body.find("llama_pool_jobs{state=\"succeeded\"} 1\n") != std::string::npos);
        CHECK(metrics->body.find("llama_pool_jobs{state=\"running\"} 0\n") != std::string::npos);

        // A held job is still running when the pool stops.
        std::ofstream(faults) << port_of(0) << " hold\n" << port_of(1) << " hold\n";
        const json slow = {{"type", "summarize"},
                           {"text", tagged_text(400)},
                           {"max_chunk_chars", 400},
                           {"overlap", 0}};
        const auto r2 = pool.client(10s).Post("/v1/jobs", slow.dump(), "application/json");
        REQUIRE(r2);
        REQUIRE(r2->status == 202);
        running_id = json::parse(r2->body)["id"].get<std::string>();
        CHECK(wait_until(
            [&] { return get_json(pool, "/v1/jobs/" + running_id)["state"] == "running"; }, 30s));
        pool.process().signal(SIGTERM);
        REQUIRE(pool.process().wait_exit(20s));
    }
    // The next start keeps the finished job and resumes the one the stop cut short.
    std::ofstream(faults) << "";
    PoolProcess again(args);
    REQUIRE(again.wait_listening(20s));
    const auto done = get_json(again, "/v1/jobs/" + done_id);
    CHECK(done["state"] == "succeeded");
    CHECK(tag_order(done["result"]["summary"].get<std::string>()).size() == 150);
    CHECK_FALSE(done.contains("resumed"));
    const auto list = get_json(again, "/v1/jobs");
    CHECK(list["data"].size() == 2);
    const auto cut = wait_for_job(again, running_id, 60s);
    INFO(cut.dump());
    CHECK(cut["state"] == "succeeded");
    CHECK(cut["resumed"]["times"] == 1);
    CHECK(tag_order(cut["result"]["summary"].get<std::string>()).size() == 400);
}

TEST_CASE("a job survives a SIGKILL of the pool with its finished chunks kept",
          "[integration][jobs]") {
    const TempDir data;
    TempDir dir;
    const auto faults = dir.file("faults");
    std::ofstream(faults) << "";
    const auto args = fake_pool_args(2, {"--data-dir", data.path()},
                                     {"--echo-tags", "--latency-ms", "20", "--fault-file", faults});
    const json body = {{"type", "summarize"},
                       {"text", tagged_text(200)},
                       {"max_chunk_chars", 400},
                       {"overlap", 0}};
    std::string id;
    std::size_t done_before = 0;
    std::size_t total = 0;
    {
        PoolProcess pool(args);
        REQUIRE(pool.wait_ready(2, 20s));
        // Worker 1 holds what it gets: the job stays half done, worker 0 doing the rest.
        std::ofstream(faults) << pool.status()["workers"][1]["port"].get<int>() << " hold\n";
        const auto r = pool.client(10s).Post("/v1/jobs", body.dump(), "application/json");
        REQUIRE(r);
        REQUIRE(r->status == 202);
        id = json::parse(r->body)["id"].get<std::string>();
        json job;
        REQUIRE(wait_until(
            [&] {
                job = get_json(pool, "/v1/jobs/" + id);
                const auto& levels = job["progress"]["levels"];
                return !levels.empty() && levels[0]["done"].get<std::size_t>() >= 5;
            },
            30s));
        done_before = job["progress"]["levels"][0]["done"].get<std::size_t>();
        total = job["progress"]["levels"][0]["total"].get<std::size_t>();
        REQUIRE(done_before < total);
        pool.process().signal(SIGKILL);
        REQUIRE(pool.process().wait_exit(20s));
    }
    std::ofstream(faults) << "";
    PoolProcess again(args);
    REQUIRE(again.wait_listening(20s));
    // Its progress continues from what was saved: never below what was seen before the kill.
    std::size_t lowest = total;
    json job;
    const bool ended = wait_until(
        [&] {
            job = get_json(again, "/v1/jobs/" + id);
            const auto& levels = job["progress"]["levels"];
            if (!levels.empty()) {
                lowest = std::min(lowest, levels[0]["done"].get<std::size_t>());
            }
            return job["state"] != "queued" && job["state"] != "running";
        },
        60s);
    INFO(job.dump());
    REQUIRE(ended);
    CHECK(job["state"] == "succeeded");
    CHECK(lowest >= done_before);
    CHECK(job["resumed"]["times"] == 1);
    const auto reused = job["resumed"]["reused_chunks"].get<std::size_t>();
    CHECK(reused >= done_before);
    CHECK(reused < total);
    // Only the rest was asked for: the reused chunks are not among this run's completions.
    std::size_t chunks = 0;
    for (const auto& level : job["result"]["levels"]) {
        chunks += level["chunks"].get<std::size_t>();
    }
    CHECK(job["result"]["completions"].get<std::size_t>() + reused == chunks);
    CHECK(tag_order(job["result"]["summary"].get<std::string>()).size() == 200);
    CHECK(again.log_lines_with("job_resumed").find(id) != std::string::npos);
}

TEST_CASE("DELETE cancels a running job and its calls on the workers", "[integration][jobs]") {
    const TempDir data;
    // Slow workers: each chunk takes seconds, so the job is surely mid-flight.
    PoolProcess pool(fake_pool_args(2, {"--data-dir", data.path()}, {"--tokens-per-second", "20"}));
    REQUIRE(pool.wait_ready(2, 20s));
    const json body = {{"type", "summarize"},
                       {"text", tagged_text(100)},
                       {"max_chunk_chars", 600},
                       {"n_predict", 200}};
    const auto r = pool.client(10s).Post("/v1/jobs", body.dump(), "application/json");
    REQUIRE(r);
    REQUIRE(r->status == 202);
    const auto id = json::parse(r->body)["id"].get<std::string>();
    // Wait until chunks occupy the workers' slots.
    REQUIRE(wait_until([&] { return pool.status()["totals"]["inflight"].get<int>() >= 2; }, 30s));
    const auto del = pool.client(20s).Delete("/v1/jobs/" + id);
    REQUIRE(del);
    INFO(del->body);
    CHECK(del->status == 200);
    CHECK(json::parse(del->body)["state"] == "cancelled");
    // The chunk requests were cancelled on the workers, not left to run out.
    CHECK(wait_until([&] { return pool.status()["totals"]["inflight"].get<int>() == 0; }, 30s));
    // A second DELETE forgets the finished job.
    const auto again = pool.client(10s).Delete("/v1/jobs/" + id);
    REQUIRE(again);
    CHECK(again->status == 200);
    CHECK(pool.client(10s).Get("/v1/jobs/" + id)->status == 404);
}
