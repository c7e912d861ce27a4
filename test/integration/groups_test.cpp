// Model groups with fake workers: routing by model and path, on-demand start with requests
// held, idle stop, eviction under the worker budget, per-group capacity, admin start/stop.
#include <catch2/catch.hpp>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <thread>

#include "test/support/pool_fixture.hpp"

using namespace llama_pool::test;
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

// A config with `groups` in a fresh directory that also holds the groups' (dummy) model
// files: the fakes answer with the model path they were given, which says who served.
struct GroupsConfig {
    TempDir dir;
    explicit GroupsConfig(const json& groups, const json& workers = json::object()) {
        for (const auto* name : {"chat.gguf", "embed.gguf", "cold.gguf", "other.gguf"}) {
            std::ofstream(dir.file(name)) << "gguf";
        }
        write(groups, workers);
    }
    // (Re)writes the file, for a reload.
    void write(const json& groups, const json& workers = json::object()) const {
        json doc;
        doc["workers"] = workers;
        doc["groups"] = groups;
        // Model names are file names here; the directory is filled in.
        for (auto& g : doc["groups"]) {
            g["model"] = dir.file(g["model"].get<std::string>());
        }
        std::ofstream(path()) << doc.dump(2);
    }
    std::string path() const { return dir.file("pool.json"); }
};

std::vector<std::string> group_pool_args(const GroupsConfig& config,
                                         std::vector<std::string> extra = {}) {
    auto args = fake_pool_args(1, {"--config", config.path()});
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
}

// The pid of the group's one worker; 0 when it has none running.
int group_pid(const PoolProcess& pool, const std::string& name) {
    const auto status = pool.status();
    for (const auto& w : status.value("workers", json::array())) {
        if (w["group"] == name && w["pid"].get<int>() > 0) {
            return w["pid"].get<int>();
        }
    }
    return 0;
}

// The most requests a worker of the group ever held at once, asked of the fake itself.
int worker_peak(const PoolProcess& pool, const std::string& group) {
    const auto status = pool.status();
    for (const auto& w : status.value("workers", json::array())) {
        if (w["group"] == group) {
            httplib::Client direct("127.0.0.1", w["port"].get<int>());
            const auto r = direct.Get("/fake/stats");
            return r && r->status == 200 ? json::parse(r->body)["peak_concurrent"].get<int>() : -1;
        }
    }
    return -1;
}

json group_status(const PoolProcess& pool, const std::string& name) {
    const auto status = pool.status();  // held: a range over a temporary's member dangles
    for (const auto& g : status.value("groups", json::array())) {
        if (g["name"] == name) {
            return g;
        }
    }
    return json();
}

// Which model file answered a POST (the fake names its --model in every reply).
std::string served_by(PoolProcess& pool, const std::string& path, const json& body) {
    auto c = pool.client();
    const auto r = c.Post(path, body.dump(), "application/json");
    if (!r || r->status != 200) {
        return r ? "status " + std::to_string(r->status) + ": " + r->body : "no reply";
    }
    const auto doc = json::parse(r->body, nullptr, false);
    return std::filesystem::path(doc.value("model", std::string())).filename().string();
}

}  // namespace

TEST_CASE("groups: one URL routes by model name, alias, file name and endpoint",
          "[integration][groups]") {
    GroupsConfig config(json::array(
        {{{"name", "chat"}, {"aliases", {"bitnet"}}, {"model", "chat.gguf"}, {"workers", 1}},
         {{"name", "embed"},
          {"model", "embed.gguf"},
          {"workers", 1},
          {"endpoints", {"/v1/embeddings", "/v1/completions"}}}}));
    PoolProcess pool(group_pool_args(config));
    REQUIRE(pool.wait_ready(2, 20s));
    CHECK(served_by(pool, "/completion", {{"model", "chat"}, {"prompt", "x"}}) == "chat.gguf");
    CHECK(served_by(pool, "/completion", {{"model", "bitnet"}, {"prompt", "x"}}) == "chat.gguf");
    CHECK(served_by(pool, "/completion", {{"model", "embed"}, {"prompt", "x"}}) == "embed.gguf");
    // The n8n node's model paths: the file name decides.
    CHECK(served_by(pool, "/completion", {{"model", "models/x/embed.gguf"}, {"prompt", "x"}}) ==
          "embed.gguf");
    // No model, or one nobody has: the endpoint's group, else the default (first) group.
    // (The fake serves no embeddings; /v1/completions stands in for an embeddings path.)
    CHECK(served_by(pool, "/v1/completions", {{"prompt", "hello"}}) == "embed.gguf");
    CHECK(served_by(pool, "/completion", {{"model", "gpt-4o"}, {"prompt", "x"}}) == "chat.gguf");

    auto c = pool.client();
    const auto models = c.Get("/v1/models");
    REQUIRE(models);
    REQUIRE(models->status == 200);
    const auto list = json::parse(models->body);
    REQUIRE(list["data"].size() == 2);
    CHECK(list["data"][0]["id"] == "chat");
    CHECK(list["data"][0]["aliases"] == json::array({"bitnet"}));
    CHECK(list["data"][1]["id"] == "embed");
    CHECK(list["data"][1]["running"] == true);

    // /props for one group, and the sum over both.
    const auto props_one = c.Get("/props?model=embed");
    REQUIRE(props_one);
    CHECK(json::parse(props_one->body)["workers"].size() == 1);
    CHECK(json::parse(props_one->body)["workers"][0]["group"] == "embed");
    const auto props_all = c.Get("/props");
    REQUIRE(props_all);
    CHECK(json::parse(props_all->body)["workers"].size() == 2);

    // /slots for one group: only its worker's slots; without ?model=, both workers'.
    std::size_t all_slots = 0;
    for (const auto* name : {"chat", "embed"}) {
        const auto slots = c.Get(std::string("/slots?model=") + name);
        REQUIRE(slots);
        REQUIRE(slots->status == 200);
        const auto list = json::parse(slots->body);
        REQUIRE(list.is_array());
        CHECK(list.size() == group_status(pool, name)["slots"].get<std::size_t>());
        CHECK_FALSE(list.empty());
        for (const auto& slot : list) {
            CHECK(slot.value("worker", std::string()) == std::string(name) + ".0");
        }
        all_slots += list.size();
    }
    const auto slots_all = c.Get("/slots");
    REQUIRE(slots_all);
    CHECK(json::parse(slots_all->body).size() == all_slots);

    // Worker ids carry the group; every per-worker series carries a group label.
    const auto status = pool.status();
    CHECK(status["workers"][0]["id"] == "chat.0");
    CHECK(status["workers"][1]["group"] == "embed");
    const auto metrics = c.Get("/metrics");
    REQUIRE(metrics);
    CHECK(metrics->body.find(R"(llama_pool_inflight_requests{group="embed",worker="embed.0"})") !=
          std::string::npos);
    CHECK(metrics->body.find(R"(llama_pool_requests_total{group="chat",route="/completion")") !=
          std::string::npos);
    const auto embed_only = c.Get("/metrics?model=embed");
    REQUIRE(embed_only);
    CHECK(embed_only->body.find(R"(group="chat")") == std::string::npos);
    CHECK(embed_only->body.find(R"(group="embed")") != std::string::npos);
}

TEST_CASE(
    "groups: a request for a stopped group waits while a worker starts, then the group "
    "stops when idle",
    "[integration][groups]") {
    GroupsConfig config(json::array({{{"name", "chat"}, {"model", "chat.gguf"}, {"workers", 1}},
                                     {{"name", "cold"},
                                      {"model", "cold.gguf"},
                                      {"workers", 2},
                                      {"min_workers", 0},
                                      {"idle_stop", 1},
                                      {"args", {"--load-delay-ms", "300"}}}}));
    PoolProcess pool(group_pool_args(config));
    REQUIRE(pool.wait_ready(1, 20s));
    CHECK(group_status(pool, "cold")["workers"] == 0);
    // Held in the group's queue while its worker loads and warms; then served.
    CHECK(served_by(pool, "/completion", {{"model", "cold"}, {"prompt", "x"}}) == "cold.gguf");
    CHECK(group_status(pool, "cold")["workers"] == 1);
    CHECK(pool.log_lines_with("event=group_scaled_up").find("reason=demand") != std::string::npos);
    // Idle for idle_stop: back to zero workers; the always-on group is untouched.
    CHECK(wait_until([&] { return group_status(pool, "cold")["workers"] == 0; }, 15s, 50ms));
    CHECK(pool.log_lines_with("event=group_scaled_down").find("reason=idle") != std::string::npos);
    CHECK(group_status(pool, "chat")["workers"] == 1);
    // And it comes back on the next request.
    CHECK(served_by(pool, "/completion", {{"model", "cold"}, {"prompt", "x"}}) == "cold.gguf");
}

TEST_CASE("groups: under the worker budget the least recently used idle group gives way",
          "[integration][groups]") {
    GroupsConfig config(
        json::array(
            {{{"name", "chat"}, {"model", "chat.gguf"}, {"workers", 1}, {"min_workers", 0}},
             {{"name", "embed"}, {"model", "embed.gguf"}, {"workers", 1}, {"min_workers", 0}}}),
        {{"max_total", 1}});
    PoolProcess pool(group_pool_args(config));
    REQUIRE(pool.wait_listening(20s));
    std::atomic<bool> done{false};
    std::atomic<int> most{0};
    // Watches the number of worker processes the whole time.
    auto watcher = std::async(std::launch::async, [&] {
        while (!done) {
            const auto s = pool.status();
            int n = 0;
            for (const auto& w : s["workers"]) {
                n += w["pid"].get<int>() > 0 ? 1 : 0;
            }
            most = std::max(most.load(), std::max(n, s["worker_budget"]["in_use"].get<int>()));
            std::this_thread::sleep_for(5ms);  // a sampler's pace, not a wait for an event
        }
    });
    for (int round = 0; round < 3; ++round) {
        CHECK(served_by(pool, "/completion", {{"model", "chat"}, {"prompt", "x"}}) == "chat.gguf");
        CHECK(served_by(pool, "/completion", {{"model", "embed"}, {"prompt", "x"}}) ==
              "embed.gguf");
    }
    done = true;
    watcher.get();
    CHECK(most <= 1);
    CHECK(pool.log_lines_with("reason=evicted").find("group=chat") != std::string::npos);
}

TEST_CASE("groups: each group's capacity bounds its own requests", "[integration][groups]") {
    GroupsConfig config(json::array(
        {{{"name", "chat"},
          {"model", "chat.gguf"},
          {"workers", 1},
          {"parallel", 1},
          {"args", {"--latency-ms", "150"}}},
         {{"name", "embed"}, {"model", "embed.gguf"}, {"workers", 1}, {"parallel", 1}}}));
    PoolProcess pool(group_pool_args(config));
    REQUIRE(pool.wait_ready(2, 20s));
    std::vector<std::future<std::string>> calls;
    for (int i = 0; i < 4; ++i) {
        calls.push_back(std::async(std::launch::async, [&] {
            return served_by(pool, "/completion", {{"model", "chat"}, {"prompt", "x"}});
        }));
    }
    // The other group is not held up by chat's queue.
    CHECK(served_by(pool, "/completion", {{"model", "embed"}, {"prompt", "x"}}) == "embed.gguf");
    for (auto& c : calls) {
        CHECK(c.get() == "chat.gguf");
    }
    // The fake counts every request it held, queued ones included: never two at once.
    CHECK(worker_peak(pool, "chat") == 1);
    CHECK(worker_peak(pool, "embed") == 1);
}

TEST_CASE("groups: admin routes stop and start a group", "[integration][groups]") {
    GroupsConfig config(
        json::array({{{"name", "chat"}, {"model", "chat.gguf"}, {"workers", 1}},
                     {{"name", "other"}, {"model", "other.gguf"}, {"workers", 1}}}));
    PoolProcess pool(group_pool_args(config));
    REQUIRE(pool.wait_ready(2, 20s));
    auto c = pool.client();
    auto r = c.Post("/pool/groups/other/stop", "", "application/json");
    REQUIRE(r);
    CHECK(r->status == 202);
    CHECK(wait_until([&] { return group_status(pool, "other")["workers"] == 0; }, 15s, 50ms));
    CHECK(group_status(pool, "other")["admin_hold"] == "stopped");
    CHECK(group_status(pool, "chat")["workers"] == 1);
    r = c.Post("/pool/groups/other/start", "", "application/json");
    REQUIRE(r);
    CHECK(r->status == 202);
    CHECK(wait_until([&] { return group_status(pool, "other")["ready"] == 1; }, 15s, 50ms));
    r = c.Post("/pool/groups/nope/start", "", "application/json");
    REQUIRE(r);
    CHECK(r->status == 404);
}

TEST_CASE("groups: SIGHUP replaces only the worker of the group whose settings changed",
          "[integration][groups]") {
    auto groups = json::array(
        {{{"name", "chat"}, {"model", "chat.gguf"}, {"workers", 1}, {"parallel", 1}},
         {{"name", "embed"}, {"model", "embed.gguf"}, {"workers", 1}, {"parallel", 1}}});
    GroupsConfig config(groups);
    PoolProcess pool(group_pool_args(config));
    REQUIRE(pool.wait_ready(2, 20s));
    const int chat_before = group_pid(pool, "chat");
    const int embed_before = group_pid(pool, "embed");
    REQUIRE(chat_before > 0);
    REQUIRE(embed_before > 0);

    groups[1]["parallel"] = 3;
    config.write(groups);
    pool.process().signal(SIGHUP);
    REQUIRE(wait_until(
        [&] {
            const int now = group_pid(pool, "embed");
            return now > 0 && now != embed_before && group_status(pool, "embed")["ready"] == 1;
        },
        30s));
    CHECK(pool.log_lines_with("event=config_reloaded").size() > 0);
    CHECK(group_pid(pool, "chat") == chat_before);
    // The new worker runs with the new setting: its /slots lists three.
    auto c = pool.client();
    const auto slots = c.Get("/slots?model=embed");
    REQUIRE(slots);
    CHECK(json::parse(slots->body).size() == 3);
    CHECK(served_by(pool, "/completion", {{"model", "chat"}, {"prompt", "x"}}) == "chat.gguf");
    CHECK(served_by(pool, "/completion", {{"model", "embed"}, {"prompt", "x"}}) == "embed.gguf");
}

TEST_CASE("groups: /v1/summarize and Idempotency-Key follow the group the model names",
          "[integration][groups]") {
    GroupsConfig config(
        json::array({{{"name", "chat"}, {"model", "chat.gguf"}, {"workers", 1}},
                     {{"name", "embed"}, {"model", "embed.gguf"}, {"workers", 1}}}));
    PoolProcess pool(group_pool_args(config));
    REQUIRE(pool.wait_ready(2, 20s));
    auto c = pool.client();

    const json summarize = {{"model", "embed"}, {"text", "One sentence. Another one."}};
    const auto r = c.Post("/v1/summarize", summarize.dump(), "application/json");
    REQUIRE(r);
    INFO(r->body);
    CHECK(r->status == 200);
    const auto started = pool.log_lines_with("event=summarize_started");
    CHECK(started.find("group=embed") != std::string::npos);
    CHECK(started.find("group=chat") == std::string::npos);

    // One key, two groups: each group keeps its own entry, so the second request is neither
    // a replay of the first group's reply nor a conflict with it.
    for (const auto* name : {"chat", "embed"}) {
        const json body = {{"model", name}, {"prompt", "x"}, {"temperature", 0}};
        const httplib::Headers headers = {{"Idempotency-Key", "same-key"}};
        const auto reply = c.Post("/completion", headers, body.dump(), "application/json");
        REQUIRE(reply);
        INFO(reply->body);
        REQUIRE(reply->status == 200);
        CHECK(reply->get_header_value("Idempotent-Replayed").empty());
        CHECK(std::filesystem::path(json::parse(reply->body).value("model", std::string()))
                  .filename()
                  .string() == std::string(name) + ".gguf");
    }
}
