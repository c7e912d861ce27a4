// /v1/summarize and /v1/jobs against REAL llama-server workers on the demo model.
#include <catch2/catch.hpp>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "test/support/pool_fixture.hpp"
#include "test/support/real_worker.hpp"

using namespace llama_pool::test;
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

std::string document(std::size_t chars) {
    std::string text;
    for (int i = 1; text.size() < chars; ++i) {
        text += "Report " + std::to_string(i) +
                " notes that the river rose by two metres after the storm, and the town "
                "council met to plan repairs. ";
    }
    return text;
}

}  // namespace

TEST_CASE("real workers summarize a document in parallel and as a job", "[e2e]") {
    const TempDir dir;
    const std::filesystem::path data(dir.path());
    PoolProcess pool(real_pool_args(2, {"--data-dir", data.string()}));
    REQUIRE(pool.wait_ready(2, 120s));
    auto client = pool.client(120s);
    // A fixed, short answer per chunk keeps the run quick and the levels predictable on a
    // random-weight model (which would otherwise talk until the token budget).
    json body = {{"text", document(6000)}, {"max_chunk_chars", 1500}, {"overlap", 150},
                 {"n_predict", 24},        {"ignore_eos", true},      {"temperature", 0}};
    const auto r = client.Post("/v1/summarize", body.dump(), "application/json");
    REQUIRE(r);
    INFO(r->body);
    REQUIRE(r->status == 200);
    const auto reply = json::parse(r->body);
    CHECK_FALSE(reply["summary"].get<std::string>().empty());
    CHECK(reply["converged"] == true);
    REQUIRE(reply["levels"].size() >= 2);
    CHECK(reply["levels"][0]["chunks"].get<int>() >= 4);
    CHECK(reply["levels"].back()["chunks"] == 1);
    CHECK(reply["tokens_predicted"].get<int>() == 24 * reply["completions"].get<int>());

    body["type"] = "summarize";
    const auto submitted = client.Post("/v1/jobs", body.dump(), "application/json");
    REQUIRE(submitted);
    REQUIRE(submitted->status == 202);
    const auto id = json::parse(submitted->body)["id"].get<std::string>();
    json job;
    for (int i = 0; i < 1200; ++i) {
        job = json::parse(client.Get("/v1/jobs/" + id)->body);
        if (job["state"] != "queued" && job["state"] != "running") {
            break;
        }
        std::this_thread::sleep_for(50ms);
    }
    INFO(job.dump());
    CHECK(job["state"] == "succeeded");
    CHECK_FALSE(job["result"]["summary"].get<std::string>().empty());
    CHECK(std::filesystem::exists(data / "jobs" / (id + ".json")));
}

TEST_CASE("a real worker's deterministic reply is served from the cache", "[e2e]") {
    PoolProcess pool(real_pool_args(1, {"--cache"}));
    REQUIRE(pool.wait_ready(1, 120s));
    auto client = pool.client(60s);
    const std::string body =
        R"({"prompt":"The river rose","n_predict":12,"ignore_eos":true,"temperature":0})";
    const auto first = client.Post("/completion", body, "application/json");
    REQUIRE(first);
    REQUIRE(first->status == 200);
    CHECK(first->get_header_value("X-Cache") == "MISS");
    const auto second = client.Post("/completion", body, "application/json");
    REQUIRE(second);
    REQUIRE(second->status == 200);
    CHECK(second->get_header_value("X-Cache") == "HIT");
    CHECK(second->body == first->body);
    // Sampling at a temperature is not deterministic: never cached.
    const std::string sampled = R"({"prompt":"The river rose","n_predict":12,"temperature":0.8})";
    const auto third = client.Post("/completion", sampled, "application/json");
    REQUIRE(third);
    CHECK(third->get_header_value("X-Cache") != "HIT");
}
