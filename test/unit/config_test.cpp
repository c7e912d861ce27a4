#include "common/config.hpp"

#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include "test/support/test_process.hpp"

using namespace llama_pool;

namespace {

struct Env {
    std::map<std::string, std::string> values;
    EnvLookup lookup() const {
        return [this](const std::string& k) -> std::optional<std::string> {
            const auto it = values.find(k);
            return it == values.end() ? std::nullopt : std::optional(it->second);
        };
    }
};

std::string write_temp(const std::string& text) {
    char path[] = "/tmp/llama-pool-config-XXXXXX";
    const int fd = ::mkstemp(path);
    ::close(fd);
    std::ofstream(path) << text;
    return path;
}

bool any_error_contains(const ConfigResult& r, const std::string& needle) {
    for (const auto& e : r.errors) {
        if (e.find(needle) != std::string::npos) {
            return true;
        }
    }
    return false;
}

}  // namespace

TEST_CASE("defaults apply when nothing is given", "[config]") {
    const auto r = load_config({"--workers", "0"}, Env{}.lookup());
    REQUIRE(r.ok());
    CHECK(r.config.port == 8081);
    CHECK(r.config.host == "127.0.0.1");
    CHECK(r.config.threads == 0);
}

TEST_CASE("the shipped config file is valid and equals the defaults", "[config]") {
    std::vector<std::string> errors;
    PoolConfig c;
    std::ifstream in(std::string(LLAMA_POOL_SOURCE_DIR) + "/conf/llama-pool.json");
    REQUIRE(in);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    apply_config_json(text, "conf/llama-pool.json", c, errors);
    CHECK(errors.empty());
    CHECK(c == PoolConfig{});
}

TEST_CASE("config errors name the file, the key, the value and what is allowed", "[config]") {
    const auto file = write_temp(R"({
        // comments are fine
        "workers": {"count": -1, "parallel": "two", "paralel": 2},
        "log": {"format": "xml"}
    })");
    const auto r = load_config({"--config", file}, Env{}.lookup());
    CHECK_FALSE(r.ok());
    CHECK(any_error_contains(
        r, file + ": key \"workers.count\": -1 is out of range (allowed: 0..256)"));
    CHECK(any_error_contains(r, "key \"workers.parallel\": \"two\" is not an integer"));
    CHECK(any_error_contains(
        r, "unknown key \"workers.paralel\" (did you mean \"workers.parallel\"?)"));
    CHECK(any_error_contains(r, "\"xml\" is not allowed (allowed: text, json)"));
    std::remove(file.c_str());
}

TEST_CASE("invalid JSON is reported with the file name", "[config]") {
    const auto file = write_temp("{ \"workers\": ");
    const auto r = load_config({"--config", file}, Env{}.lookup());
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].rfind(file + ": not valid JSON", 0) == 0);
    std::remove(file.c_str());
}

TEST_CASE("flags override the environment, which overrides the file", "[config]") {
    const auto file = write_temp(
        R"({"listen": {"port": 1111, "host": "0.0.0.0"}, "workers": {"count": 0, "parallel": 3}})");
    Env env;
    env.values["LLAMA_POOL_PORT"] = "2222";
    env.values["LLAMA_POOL_PARALLEL"] = "5";
    const auto r = load_config({"--config", file, "--port", "3333"}, env.lookup());
    REQUIRE(r.ok());
    CHECK(r.config.port == 3333);
    CHECK(r.config.parallel == 5);
    CHECK(r.config.host == "0.0.0.0");
    std::remove(file.c_str());
}

TEST_CASE("the cache section is off by default and set from file, environment and flags",
          "[config]") {
    CHECK_FALSE(PoolConfig{}.cache_enabled);
    const auto file = write_temp(R"({"cache": {"enabled": true, "ttl": 30, "max_bytes": 4096}})");
    Env env;
    env.values["LLAMA_POOL_CACHE_TTL"] = "45";
    env.values["LLAMA_POOL_IDEMPOTENCY_WINDOW"] = "0";
    const auto r = load_config({"--workers", "0", "--config", file, "--cache-max-bytes", "8192",
                                "--idempotency-max-bytes", "2048"},
                               env.lookup());
    REQUIRE(r.ok());
    CHECK(r.config.cache_enabled);
    CHECK(r.config.cache_ttl == 45);
    CHECK(r.config.cache_max_bytes == 8192);
    CHECK(r.config.idempotency_window == 0);
    CHECK(r.config.idempotency_max_bytes == 2048);
    CHECK(load_config({"--workers", "0", "--cache"}, Env{}.lookup()).config.cache_enabled);
    const auto bad = load_config({"--workers", "0", "--cache-max-bytes", "10"}, Env{}.lookup());
    CHECK(any_error_contains(bad, "key \"cache.max_bytes\": 10 is out of range"));
    std::remove(file.c_str());
}

TEST_CASE("bad flags are reported", "[config]") {
    const auto r = load_config({"--workers", "many", "--bogus", "--port"}, Env{}.lookup());
    CHECK(any_error_contains(
        r, "option --workers: key \"workers.count\": \"many\" is not an integer"));
    CHECK(any_error_contains(r, "unknown option \"--bogus\""));
    CHECK(any_error_contains(r, "option --port needs a value"));
}

TEST_CASE("a missing model and a non-executable llama-server are reported", "[config]") {
    const auto r = load_config({"--workers", "1", "--llama-server", "/nonexistent/llama-server",
                                "--model", "/nonexistent/model.gguf"},
                               Env{}.lookup());
    CHECK(any_error_contains(r, "\"/nonexistent/llama-server\" is not an executable file"));
    CHECK(any_error_contains(r, "\"/nonexistent/model.gguf\" does not exist"));
}

TEST_CASE("a missing model's error says what its folder holds", "[config]") {
    const test::TempDir dir;
    const auto models = dir.file("models");
    const auto model_in = [&](const std::string& folder) {
        return load_config({"--workers", "1", "--model", folder + "/model.gguf"}, Env{}.lookup());
    };
    // Docker creates an empty folder for a host path that does not exist.
    std::filesystem::create_directory(models);
    CHECK(any_error_contains(
        model_in(models), "its folder \"" + models + "\" is empty: is the models folder mounted"));
    std::ofstream(models + "/ggml-model-i2_s.gguf") << "x";
    CHECK(any_error_contains(model_in(models), "holds \"ggml-model-i2_s.gguf\""));
    CHECK(any_error_contains(model_in(dir.file("absent")), "\" does not exist"));
}

TEST_CASE("repeated --worker-arg accumulates and threads accepts auto", "[config]") {
    const auto r = load_config({"--workers", "0", "--worker-arg", "--cache-reuse", "--worker-arg",
                                "256", "--threads", "auto"},
                               Env{}.lookup());
    REQUIRE(r.ok());
    CHECK(r.config.worker_args == std::vector<std::string>{"--cache-reuse", "256"});
    CHECK(r.config.threads == 0);
    CHECK(config_to_json(r.config)["workers"]["threads"] == "auto");
}

TEST_CASE("help and version are actions, and help lists every flag", "[config]") {
    CHECK(load_config({"--help"}, Env{}.lookup()).action == CliAction::help);
    CHECK(load_config({"--version"}, Env{}.lookup()).action == CliAction::version);
    const auto help = help_text();
    for (const auto* flag :
         {"--config", "--host", "--port", "--workers", "--llama-server", "--model", "--threads",
          "--ctx-size", "--parallel", "--worker-arg", "--check-config"}) {
        CHECK(help.find(flag) != std::string::npos);
    }
}

TEST_CASE("upstream URLs: schemes, weights and their errors", "[config]") {
    UpstreamAddress a;
    std::string error;
    REQUIRE(parse_upstream_url("http://10.0.0.5:8081/", a, error));
    CHECK(a.host == "10.0.0.5");
    CHECK(a.port == 8081);
    CHECK(a.weight == 1);
    CHECK_FALSE(a.discover);
    REQUIRE(parse_upstream_url("dns://workers.svc:8081?weight=2.5", a, error));
    CHECK(a.discover);
    CHECK(a.weight == 2.5);
    REQUIRE(parse_upstream_url("http://[::1]:9000", a, error));
    CHECK(a.host == "::1");
    CHECK_FALSE(parse_upstream_url("https://x:1", a, error));
    CHECK_FALSE(parse_upstream_url("http://x", a, error));
    CHECK_FALSE(parse_upstream_url("http://x:70000", a, error));
    CHECK_FALSE(parse_upstream_url("http://x:80?weight=0", a, error));
    CHECK_FALSE(parse_upstream_url("http://x:80?weight=abc", a, error));
    CHECK_FALSE(parse_upstream_url("http://x:80?color=red", a, error));
    CHECK(error.find("weight=N") != std::string::npos);
}

TEST_CASE("a breaker max ejection below the first ejection is refused, not capped", "[config]") {
    const auto bad =
        load_config({"--workers", "0", "--breaker-ejection", "30", "--breaker-max-ejection", "10"},
                    Env{}.lookup());
    CHECK_FALSE(bad.errors.empty());
    CHECK(any_error_contains(bad,
                             "key \"proxy.breaker_max_ejection\": 10 is below "
                             "breaker_ejection 30"));
    // Every error at once: another bad key in the same call is reported too.
    const auto two =
        load_config({"--workers", "0", "--breaker-ejection", "30", "--breaker-max-ejection", "10",
                     "--retry-backoff-base", "2", "--retry-backoff-cap", "1"},
                    Env{}.lookup());
    CHECK(any_error_contains(two, "proxy.breaker_max_ejection"));
    CHECK(any_error_contains(two, "proxy.retry_backoff_cap"));
    const auto equal =
        load_config({"--workers", "0", "--breaker-ejection", "30", "--breaker-max-ejection", "30"},
                    Env{}.lookup());
    CHECK(equal.errors.empty());
}
