// Model groups: their configuration, the routing rules and the scaling/budget policy (pure,
// on a fake clock).
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "common/config.hpp"
#include "proxy/group_router.hpp"
#include "supervisor/group_scaling.hpp"
#include "test/support/test_process.hpp"

using namespace llama_pool;
using namespace std::chrono_literals;

namespace {

// A config file with `body` in a fresh directory, plus an executable and two model files
// there, so validation's file checks pass.
struct ConfigDir {
    test::TempDir dir;
    ConfigDir() {
        std::ofstream(dir.file("llama-server")) << "#!/bin/sh\n";
        std::filesystem::permissions(dir.file("llama-server"), std::filesystem::perms::owner_all);
        std::ofstream(dir.file("chat.gguf")) << "x";
        std::ofstream(dir.file("embed.gguf")) << "x";
    }
    ConfigResult load(const std::string& groups_json, std::vector<std::string> args = {}) {
        const auto path = dir.file("pool.json");
        std::ofstream(path) << R"({"workers": {"llama_server": ")" << dir.file("llama-server")
                            << R"("}, "groups": )" << groups_json << "}";
        args.insert(args.begin(), {"--config", path});
        return load_config(args, [](const std::string&) { return std::nullopt; });
    }
    std::string model(const std::string& name) const { return dir.file(name); }
};

bool has_error(const ConfigResult& r, const std::string& part) {
    for (const auto& e : r.errors) {
        if (e.find(part) != std::string::npos) {
            return true;
        }
    }
    return false;
}

}  // namespace

TEST_CASE("groups: a config with groups resolves each one's settings", "[groups][config]") {
    ConfigDir d;
    const auto r = d.load(R"([
        {"name": "chat", "aliases": ["bitnet"], "model": ")" +
                          d.model("chat.gguf") +
                          R"(", "workers": 2, "parallel": 4},
        {"name": "embed", "model": ")" +
                          d.model("embed.gguf") +
                          R"(", "workers": 1, "min_workers": 0, "idle_stop": 60,
         "endpoints": ["/v1/embeddings"], "args": ["--embeddings"], "default": false}])");
    REQUIRE(r.ok());
    const auto groups = resolve_groups(r.config, 6);
    REQUIRE(groups.size() == 2);
    CHECK(groups[0].spec.name == "chat");
    CHECK(groups[0].spec.is_default);  // none says so: the first
    CHECK(groups[0].config.parallel == 4);
    CHECK(groups[0].config.workers == 2);
    CHECK(groups[0].spec.min_workers == 2);  // default: = workers
    CHECK(groups[1].config.parallel == r.config.parallel);
    CHECK(groups[1].config.worker_args == std::vector<std::string>{"--embeddings"});
    CHECK(groups[1].spec.min_workers == 0);
    CHECK(groups[1].spec.idle_stop == 60);
    // Automatic threads: 6 cores over the 3 workers that may run at once.
    CHECK(groups[0].config.threads == 2);
    CHECK(groups[1].config.threads == 2);
}

TEST_CASE("groups: unmanaged upstreams belong to the default group", "[groups][config]") {
    PoolConfig c;
    c.upstreams = {"http://10.0.0.1:8080"};
    c.groups = {GroupConfig{"a"}, GroupConfig{"b"}};
    c.groups[1].is_default = true;
    const auto groups = resolve_groups(c, 2);
    CHECK(groups[0].config.upstreams.empty());
    CHECK(groups[1].config.upstreams == c.upstreams);
}

TEST_CASE("groups: without groups, workers.* form one implicit group", "[groups][config]") {
    PoolConfig c;
    c.workers = 3;
    c.model = "/m/a.gguf";
    const auto groups = resolve_groups(c, 2);
    REQUIRE(groups.size() == 1);
    CHECK(groups[0].implicit);
    CHECK(groups[0].spec.name == "default");
    CHECK(groups[0].spec.min_workers == 3);
    CHECK(groups[0].config.threads == 0);  // the supervisor's own rule, as before groups
}

TEST_CASE("groups: errors name the group and the key", "[groups][config]") {
    ConfigDir d;
    const auto chat = d.model("chat.gguf");
    SECTION("duplicate names and aliases") {
        const auto r =
            d.load(R"([{"name": "a", "model": ")" + chat +
                   R"("}, {"name": "b", "aliases": ["a"], "model": ")" + chat + R"("}])");
        CHECK(has_error(r, R"(groups[1] "b": key "aliases": "a" is already)"));
    }
    SECTION("two defaults") {
        const auto r = d.load(R"([{"name": "a", "default": true, "model": ")" + chat +
                              R"("}, {"name": "b", "default": true, "model": ")" + chat + R"("}])");
        CHECK(has_error(r, "2 groups say \"default\": true"));
    }
    SECTION("unknown key") {
        const auto r = d.load(R"([{"name": "a", "model": ")" + chat + R"(", "paralel": 2}])");
        CHECK(has_error(r, R"(groups[0] "a" key "paralel": unknown group key)"));
    }
    SECTION("a bad value of an overridden workers setting") {
        const auto r = d.load(R"([{"name": "a", "model": ")" + chat + R"(", "parallel": 0}])");
        CHECK(has_error(r, R"(key "workers.parallel": 0 is out of range)"));
    }
    SECTION("a missing model") {
        const auto r = d.load(R"([{"name": "a", "model": "/nonexistent/x.gguf"}])");
        CHECK(has_error(r, R"(groups[0] "a": key "model": "/nonexistent/x.gguf" does not exist)"));
    }
    SECTION("a missing name and a bad one") {
        const auto r = d.load(R"([{"model": ")" + chat + R"("}, {"name": "a b", "model": ")" +
                              chat + R"("}])");
        CHECK(has_error(r, R"(groups[0]: key "name" is required)"));
        CHECK(has_error(r, R"(key "name": "a b" may hold only letters)"));
    }
    SECTION("min_workers above workers") {
        const auto r = d.load(R"([{"name": "a", "model": ")" + chat +
                              R"(", "workers": 1, "min_workers": 2}])");
        CHECK(has_error(r, R"(key "min_workers": 2 is more than the group's workers (1))"));
    }
    SECTION("a budget below what must always run") {
        const auto r = d.load(R"([{"name": "a", "model": ")" + chat + R"(", "workers": 2}])",
                              {"--max-total-workers", "1"});
        CHECK(has_error(r, R"(key "workers.max_total": 1 is below the 2 workers)"));
    }
    SECTION("an override that breaks a rule between two workers settings") {
        const auto r =
            d.load(R"([{"name": "a", "model": ")" + chat + R"("}, {"name": "b", "model": ")" +
                       chat + R"(", "restart_backoff_base": 100}])",
                   {"--restart-backoff-cap", "30"});
        CHECK(has_error(r, R"(groups[1] "b": key "restart_backoff_cap": 30 is below )"
                           R"(restart_backoff_base 100)"));
        CHECK(r.errors.size() == 1);  // group a inherits valid settings: nothing said about it
    }
    SECTION("a bad pair at the top level is reported once, not again for each group") {
        const auto r =
            d.load(R"([{"name": "a", "model": ")" + chat +
                       R"(", "parallel": 2}, {"name": "b", "model": ")" + chat + R"("}])",
                   {"--restart-backoff-cap", "1", "--restart-backoff-base", "5"});
        CHECK(has_error(r, R"(key "workers.restart_backoff_cap": 1 is below)"));
        CHECK(r.errors.size() == 1);
    }
    SECTION("groups is not an array") {
        const auto r = d.load(R"({"name": "a"})");
        CHECK(has_error(r, R"(key "groups": must be an array)"));
    }
}

TEST_CASE("groups: --group NAME=MODEL replaces the file's groups", "[groups][config]") {
    ConfigDir d;
    const auto r = d.load(
        R"([{"name": "old", "model": ")" + d.model("chat.gguf") + R"("}])",
        {"--group", "chat=" + d.model("chat.gguf"), "--group=embed=" + d.model("embed.gguf")});
    REQUIRE(r.ok());
    REQUIRE(r.config.groups.size() == 2);
    CHECK(r.config.groups[0].name == "chat");
    CHECK(r.config.groups[1].model == d.model("embed.gguf"));
    const auto bad = d.load("[]", {"--group", "nomodel"});
    CHECK(has_error(bad, "must be NAME=MODEL"));
}

TEST_CASE("groups: --check-config prints each group as it will run", "[groups][config]") {
    ConfigDir d;
    const auto r = d.load(R"([
        {"name": "chat", "aliases": ["bitnet", "b2"], "model": ")" +
                              d.model("chat.gguf") + R"(", "parallel": 4},
        {"name": "embed", "model": ")" +
                              d.model("embed.gguf") +
                              R"(", "workers": 3, "min_workers": 1, "idle_stop": 60,
         "endpoints": ["/v1/embeddings"], "default": true}])",
                          {"--workers", "2"});
    REQUIRE(r.ok());
    const auto shown = checked_config_json(r.config);
    REQUIRE(shown["groups"].size() == 2);
    const auto& chat = shown["groups"][0];
    CHECK(chat["name"] == "chat");
    CHECK(chat["aliases"] == nlohmann::json::array({"bitnet", "b2"}));
    CHECK(chat["model"] == d.model("chat.gguf"));
    CHECK(chat["workers"] == 2);      // workers.count, filled in
    CHECK(chat["min_workers"] == 2);  // = workers when not given
    CHECK(chat["idle_stop"] == 0);
    CHECK(chat["endpoints"].empty());
    CHECK(chat["default"] == false);  // embed says it is
    CHECK(chat["parallel"] == 4);     // an override, without its "workers." prefix
    const auto& embed = shown["groups"][1];
    CHECK(embed["name"] == "embed");
    CHECK(embed["aliases"].empty());
    CHECK(embed["model"] == d.model("embed.gguf"));
    CHECK(embed["workers"] == 3);
    CHECK(embed["min_workers"] == 1);
    CHECK(embed["idle_stop"] == 60);
    CHECK(embed["endpoints"] == nlohmann::json::array({"/v1/embeddings"}));
    CHECK(embed["default"] == true);
    CHECK_FALSE(embed.contains("parallel"));
    CHECK(shown["workers"]["count"] == 2);  // the rest of the config is still there
}

TEST_CASE("groups: changed_keys names groups when they differ", "[groups][config]") {
    PoolConfig a;
    auto b = a;
    b.groups.push_back(GroupConfig{"x"});
    const auto keys = changed_keys(a, b);
    CHECK(std::find(keys.begin(), keys.end(), "groups") != keys.end());
}

namespace {

std::vector<GroupConfig> routed_groups() {
    GroupConfig chat;
    chat.name = "chat";
    chat.aliases = {"bitnet-2b"};
    chat.model = "/models/BitNet-b1.58-2B-4T/ggml-model-i2_s.gguf";
    GroupConfig embed;
    embed.name = "embed";
    embed.model = "/models/embed/bge-small.gguf";
    embed.endpoints = {"/v1/embeddings", "/embeddings"};
    GroupConfig other;
    other.name = "other";
    other.model = "/models/other.gguf";
    other.is_default = true;
    return {chat, embed, other};
}

}  // namespace

TEST_CASE("group routing: name, alias, file name, endpoint, default, in that order",
          "[groups][routing]") {
    const GroupRouter router(routed_groups());
    CHECK(router.route("chat", "/completion").group == 0);
    CHECK(router.route("chat", "/completion").match == GroupMatch::name);
    CHECK(router.route("bitnet-2b", "/completion").match == GroupMatch::alias);
    // The n8n node sends a path: its file name picks the group.
    const auto by_file = router.route("models/BitNet-b1.58-2B-4T/ggml-model-i2_s.gguf", "/x");
    CHECK(by_file.group == 0);
    CHECK(by_file.match == GroupMatch::model_file);
    // A name beats the endpoint: an embeddings call naming chat goes to chat.
    CHECK(router.route("chat", "/v1/embeddings").group == 0);
    // No model, or an unknown one: the path's group, else the default group.
    CHECK(router.route("", "/v1/embeddings").group == 1);
    CHECK(router.route("", "/v1/embeddings").match == GroupMatch::endpoint);
    CHECK(router.route("gpt-4o", "/embeddings").group == 1);
    CHECK(router.route("gpt-4o", "/completion").group == 2);
    CHECK(router.route("gpt-4o", "/completion").match == GroupMatch::default_group);
    CHECK(router.route("", "/completion").group == 2);
    CHECK(router.find("bitnet-2b") == std::optional<std::size_t>(0));
    CHECK_FALSE(router.find("nope"));
}

TEST_CASE("group routing: the model is read from the body or the query", "[groups][routing]") {
    CHECK(requested_model(R"({"model":"chat","prompt":"hi"})", "") == "chat");
    CHECK(requested_model(R"({"prompt":"hi","messages":[{"model":"x"}],"model":"y"})", "") == "y");
    // Only the top level counts, and only a string.
    CHECK(requested_model(R"({"prompt":{"model":"x"}})", "").empty());
    CHECK(requested_model(R"({"model":3})", "").empty());
    CHECK(requested_model(R"(["model"])", "").empty());
    CHECK(requested_model("not json \"model\"", "").empty());
    CHECK(requested_model("", "a=1&model=emb%2Fx+y&b=2") == "emb/x y");
    CHECK(requested_model("", "models=1").empty());
    // A body's model wins over the query's.
    CHECK(requested_model(R"({"model":"a"})", "model=b") == "a");
}

namespace {

GroupLoad group(int workers, int min, int max, int inflight = 0, int waiting = 0) {
    GroupLoad g;
    g.workers = workers;
    g.min_workers = min;
    g.max_workers = max;
    g.slots_per_worker = 2;
    g.inflight = inflight;
    g.waiting = waiting;
    return g;
}

int count(const ScalePlan& plan, ScaleAction::Kind kind, std::size_t g) {
    int n = 0;
    for (const auto& a : plan.actions) {
        n += a.kind == kind && a.group == g ? 1 : 0;
    }
    return n;
}

}  // namespace

TEST_CASE("scaling: an always-on group is left alone", "[groups][scaling]") {
    const TimePoint t0{};
    const auto plan = plan_scaling({group(2, 2, 2, 4, 10)}, 0, t0);
    CHECK(plan.actions.empty());
    CHECK_FALSE(plan.next_check);
}

TEST_CASE("scaling: waiting requests start workers, one per slots' worth", "[groups][scaling]") {
    const TimePoint t0{};
    // 0 workers, 3 waiting, 2 slots each: 2 workers, within max 4.
    auto plan = plan_scaling({group(0, 0, 4, 0, 3)}, 0, t0);
    CHECK(count(plan, ScaleAction::Kind::start, 0) == 2);
    CHECK(plan.actions[0].reason == ScaleReason::demand);
    // Never beyond max_workers.
    plan = plan_scaling({group(0, 0, 1, 0, 30)}, 0, t0);
    CHECK(count(plan, ScaleAction::Kind::start, 0) == 1);
    // Nothing waits: no start, even below max.
    plan = plan_scaling({group(1, 0, 4, 2, 0)}, 0, t0);
    CHECK(plan.actions.empty());
    // Below its minimum (after an admin start): brought up.
    plan = plan_scaling({group(0, 2, 4)}, 0, t0);
    CHECK(count(plan, ScaleAction::Kind::start, 0) == 2);
    CHECK(plan.actions[0].reason == ScaleReason::below_minimum);
}

TEST_CASE("scaling: the budget is never exceeded, and the least recently used idle group gives way",
          "[groups][scaling]") {
    const TimePoint t0{};
    auto a = group(1, 0, 1);  // idle, used at t0+10s
    a.last_active = t0 + 10s;
    auto b = group(1, 0, 1);  // idle, used at t0+5s: least recently used
    b.last_active = t0 + 5s;
    auto busy = group(1, 0, 1, 1, 0);  // running a request: never evicted
    busy.last_active = t0;
    const auto c = group(0, 0, 1, 0, 1);  // a request waits for it
    const auto plan = plan_scaling({a, b, busy, c}, 3, t0 + 20s);
    REQUIRE(plan.actions.size() == 2);
    CHECK(plan.actions[0].kind == ScaleAction::Kind::stop);
    CHECK(plan.actions[0].group == 1);
    CHECK(plan.actions[0].reason == ScaleReason::evicted);
    CHECK(plan.actions[1].kind == ScaleAction::Kind::start);
    CHECK(plan.actions[1].group == 3);
    CHECK_FALSE(plan.budget_blocked);
}

TEST_CASE("scaling: with the budget full and nobody idle, the request waits", "[groups][scaling]") {
    const TimePoint t0{};
    const auto plan =
        plan_scaling({group(1, 0, 1, 1, 0), group(1, 1, 1), group(0, 0, 1, 0, 2)}, 2, t0);
    CHECK(plan.actions.empty());
    CHECK(plan.budget_blocked);
}

TEST_CASE("scaling: a group never evicts itself or goes below anyone's minimum",
          "[groups][scaling]") {
    const TimePoint t0{};
    // The only idle group above its minimum is the one asking.
    auto asking = group(1, 0, 2, 2, 1);
    const auto plan = plan_scaling({asking, group(1, 1, 1)}, 2, t0);
    CHECK(count(plan, ScaleAction::Kind::stop, 0) == 0);
    CHECK(count(plan, ScaleAction::Kind::stop, 1) == 0);
    CHECK(plan.budget_blocked);
}

TEST_CASE("scaling: an idle group stops one worker per idle_stop, down to its minimum",
          "[groups][scaling]") {
    const TimePoint t0{};
    auto g = group(3, 1, 3);
    g.idle_stop = 60;
    g.last_active = t0;
    // Just before the boundary: nothing, and a wake-up at the boundary.
    auto plan = plan_scaling({g}, 0, t0 + 60s - 1ms);
    CHECK(plan.actions.empty());
    REQUIRE(plan.next_check);
    CHECK(*plan.next_check == t0 + 60s);
    // At it: one worker stops, the next check one idle_stop later.
    plan = plan_scaling({g}, 0, t0 + 60s);
    CHECK(count(plan, ScaleAction::Kind::stop, 0) == 1);
    CHECK(plan.actions[0].reason == ScaleReason::idle);
    REQUIRE(plan.next_check);
    CHECK(*plan.next_check == t0 + 120s);
    // After that stop (last_scaled), the next one waits its own idle_stop.
    g.workers = 2;
    g.last_scaled = t0 + 60s;
    plan = plan_scaling({g}, 0, t0 + 119s);
    CHECK(plan.actions.empty());
    plan = plan_scaling({g}, 0, t0 + 120s);
    CHECK(count(plan, ScaleAction::Kind::stop, 0) == 1);
    REQUIRE_FALSE(plan.next_check);  // at its minimum after this one
    // Never below min_workers, and not while busy or with idle_stop 0.
    g.workers = 1;
    CHECK(plan_scaling({g}, 0, t0 + 1h).actions.empty());
    auto busy = group(2, 0, 2, 1, 0);
    busy.idle_stop = 1;
    CHECK(plan_scaling({busy}, 0, t0 + 1h).actions.empty());
    auto never = group(2, 0, 2);
    CHECK(plan_scaling({never}, 0, t0 + 1h).actions.empty());
}

TEST_CASE("scaling: the scaler listens only for what could change its plan", "[groups][scaling]") {
    // An always-on group at its size: no request of it is worth a wake-up (the common case,
    // where a wake per request cost each one a futex round trip and a plan).
    auto interest = scaler_interest(group(2, 2, 2, 1, 3), false);
    CHECK_FALSE(interest.demand);
    CHECK_FALSE(interest.idle);
    // It may grow: a waiting request may start a worker.
    interest = scaler_interest(group(1, 0, 3, 2, 0), false);
    CHECK(interest.demand);
    CHECK_FALSE(interest.idle);  // no idle_stop
    // Busy with an idle_stop above its minimum: going idle starts the idle_stop clock.
    auto g = group(2, 0, 2, 1, 0);
    g.idle_stop = 60;
    interest = scaler_interest(g, false);
    CHECK_FALSE(interest.demand);
    CHECK(interest.idle);
    // Already idle: its stop is due at the plan's next_check, no event needed.
    g.inflight = 0;
    CHECK_FALSE(scaler_interest(g, false).idle);
    // At its minimum: idleness stops nothing.
    g.inflight = 1;
    g.min_workers = 2;
    CHECK_FALSE(scaler_interest(g, false).idle);
    // The budget blocks some group: any group going idle may give way to it.
    CHECK(scaler_interest(g, true).idle);
    CHECK(scaler_interest(group(2, 2, 2, 1, 0), true).idle);
}
