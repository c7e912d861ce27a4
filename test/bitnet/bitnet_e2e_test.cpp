// End-to-end against BitNet's own llama-server fork (../shared/bitnet: its binary and an I2_S
// model), the worker the n8n users run. Every test runs twice: as the README tells BitNet
// users to start the pool, and with --legacy-flags as older instructions did. Skipped (exit
// 77, which ctest reports as skipped) when the folder is absent.
#include <signal.h>
#include <sys/stat.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "test/support/pool_fixture.hpp"

using namespace llama_pool::test;
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

using SteadyClock = std::chrono::steady_clock;

bool is_file(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// The folder: LLAMA_POOL_BITNET_DIR when set, else the one CMake found beside the source.
std::string bitnet_dir() {
    const auto env = env_or_empty("LLAMA_POOL_BITNET_DIR");
    return env.empty() ? std::string(LLAMA_POOL_BITNET_DIR) : env;
}

// Skips the whole test (ctest SKIP_RETURN_CODE) when the BitNet server or model is absent.
void require_bitnet_or_skip() {
    const auto dir = bitnet_dir();
    if (!is_file(dir + "/llama-server") || !is_file(dir + "/random-d384-i2_s.gguf")) {
        std::printf(
            "SKIPPED: BitNet end-to-end suite: no llama-server and I2_S model in %s "
            "(set LLAMA_POOL_BITNET_DIR)\n",
            dir.c_str());
        std::fflush(stdout);
        std::_Exit(77);
    }
}

// 1024 tokens over 2 slots: 512 per slot, small enough for a summary chunk to overflow it.
std::vector<std::string> bitnet_pool_args(int workers, bool legacy,
                                          std::vector<std::string> extra = {}) {
    require_bitnet_or_skip();
    const auto dir = bitnet_dir();
    std::vector<std::string> args = {"--workers",      std::to_string(workers),
                                     "--llama-server", dir + "/llama-server",
                                     "--model",        dir + "/random-d384-i2_s.gguf",
                                     "--ctx-size",     "1024",
                                     "--parallel",     "2"};
    if (legacy) {
        args.emplace_back("--legacy-flags");
    }
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
}

int count_of(const std::string& haystack, const std::string& needle) {
    int n = 0;
    for (auto at = haystack.find(needle); at != std::string::npos;
         at = haystack.find(needle, at + 1)) {
        ++n;
    }
    return n;
}

// A streaming completion that runs until stopped (or n_predict ends), holding a slot.
class HeldStream {
  public:
    HeldStream(std::uint16_t port, int n_predict) {
        thread_ = std::thread([this, port, n_predict] {
            httplib::Client c("127.0.0.1", port);
            c.set_read_timeout(120s);
            httplib::Request req;
            req.method = "POST";
            req.path = "/completion";
            req.body = R"({"prompt":"Once","ignore_eos":true,"stream":true,"n_predict":)" +
                       std::to_string(n_predict) + "}";
            req.set_header("Content-Type", "application/json");
            req.content_receiver = [this](const char*, size_t, uint64_t, uint64_t) {
                started_ = true;
                return !stop_.load();
            };
            httplib::Response res;
            httplib::Error err;
            c.send(req, res, err);
        });
    }
    ~HeldStream() {
        stop_ = true;
        thread_.join();
    }
    bool started() const { return started_; }

  private:
    std::atomic<bool> stop_{false};
    std::atomic<bool> started_{false};
    std::thread thread_;
};

}  // namespace

TEST_CASE("BitNet: every route answers as on llama-server", "[bitnet]") {
    const bool legacy = GENERATE(false, true);
    INFO("--legacy-flags: " << legacy);
    const auto started = SteadyClock::now();
    PoolProcess pool(bitnet_pool_args(2, legacy));
    REQUIRE(pool.wait_ready(2, 60s));
    std::printf("measured (legacy %d): pool start to 2 BitNet workers ready: %lld ms\n", legacy,
                ms_since(started));
    auto c = pool.client();

    const auto health = c.Get("/health");
    REQUIRE(health);
    CHECK(health->status == 200);

    const auto completion = c.Post(
        "/completion", R"({"prompt":"Hello","n_predict":8,"ignore_eos":true})", "application/json");
    REQUIRE(completion);
    CHECK(completion->status == 200);
    const auto cj = json::parse(completion->body);
    CHECK(cj["tokens_predicted"] == 8);
    CHECK(cj["content"].is_string());

    std::string streamed;
    const auto stream = stream_post(
        c, "/completion", R"({"prompt":"Hello","n_predict":6,"ignore_eos":true,"stream":true})",
        [&](std::string_view piece) { streamed.append(piece); });
    CHECK(stream.status == 200);
    CHECK(count_of(streamed, "data: ") == 7);  // six tokens, then the final event
    CHECK(streamed.find("\"stop\":true") != std::string::npos);

    const auto chat = c.Post(
        "/v1/chat/completions",
        R"({"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}],"max_tokens":5})",
        "application/json");
    REQUIRE(chat);
    CHECK(chat->status == 200);
    CHECK(json::parse(chat->body)["choices"][0]["message"]["content"].is_string());

    const auto props = c.Get("/props");
    REQUIRE(props);
    CHECK(props->status == 200);
    const auto pj = json::parse(props->body);
    CHECK(pj["total_slots"] == 4);
    CHECK(pj["workers"].size() == 2);
    CHECK(pj["default_generation_settings"]["n_ctx"] == 512);

    // Every slot of both workers, in the fork's dialect ("state"), none left out.
    const auto slots = c.Get("/slots");
    REQUIRE(slots);
    CHECK(slots->status == 200);
    CHECK_FALSE(slots->has_header("X-Llama-Pool-Unreported"));
    const auto sj = json::parse(slots->body);
    CHECK(sj.size() == 4);
    for (const auto& s : sj) {
        CHECK(s.contains("state"));
        CHECK(s.contains("worker"));
    }
    const auto idle = c.Get("/slots?fail_on_no_slot=1");
    REQUIRE(idle);
    CHECK(idle->status == 200);

    // Workers' own metrics, re-exported under a worker label.
    const auto metrics = c.Get("/metrics");
    REQUIRE(metrics);
    CHECK(metrics->status == 200);
    CHECK(metrics->body.find("llamacpp_tokens_predicted_total{worker=") != std::string::npos);
    CHECK(metrics->body.find("llamacpp_kv_cache_usage_ratio{worker=") != std::string::npos);

    // The fork answers a missing prompt with 500: it reaches the client once, unretried.
    const auto mistake_at = SteadyClock::now();
    const auto mistake = c.Post("/completion", R"({"n_predict":4})", "application/json");
    const auto mistake_ms = ms_since(mistake_at);
    REQUIRE(mistake);
    CHECK(mistake->status == 500);
    CHECK(mistake->body.find("must be a string, an array of token ids") != std::string::npos);
    std::printf("measured (legacy %d): a missing prompt's 500 reached the client in %lld ms\n",
                legacy, mistake_ms);
    const auto after_metrics = c.Get("/metrics");
    REQUIRE(after_metrics);
    CHECK(metric_value(after_metrics->body,
                       "llama_pool_second_opinions_total{result=\"skipped\"}") >= 1);
    CHECK(metric_value(after_metrics->body,
                       "llama_pool_second_opinions_total{result=\"failed_elsewhere\"}") < 1);

    // The fork logs every request, health probes included; the pool's log does not repeat
    // them at its default level, but the worker's own log keeps them.
    CHECK(pool.log_lines_with("request: GET /health").empty());
    const auto wlog =
        c.Get("/pool/workers/" + pool.status()["workers"][0]["id"].get<std::string>() + "/log");
    REQUIRE(wlog);
    CHECK(wlog->body.find("request: GET /health") != std::string::npos);
    CHECK(wlog->body.find("main: loading model") != std::string::npos);
}

TEST_CASE("BitNet: fail_on_no_slot answers 503 while every slot is busy", "[bitnet]") {
    const bool legacy = GENERATE(false, true);
    INFO("--legacy-flags: " << legacy);
    PoolProcess pool(bitnet_pool_args(1, legacy));
    REQUIRE(pool.wait_ready(1, 60s));
    auto c = pool.client();
    {
        HeldStream a(pool.port(), 100000);
        HeldStream b(pool.port(), 100000);
        REQUIRE(wait_until([&] { return a.started() && b.started(); }, 60s, 5ms));
        const auto busy = c.Get("/slots?fail_on_no_slot=1");
        REQUIRE(busy);
        CHECK(busy->status == 503);
        const auto slots = c.Get("/slots");
        REQUIRE(slots);
        for (const auto& s : json::parse(slots->body)) {
            CHECK(s["state"] != 0);
        }
    }
    // The streams are gone: their slots free again.
    CHECK(wait_until(
        [&] {
            const auto r = c.Get("/slots?fail_on_no_slot=1");
            return r && r->status == 200;
        },
        30s));
}

TEST_CASE("BitNet: a summary chunk over the slot context is split, never cut", "[bitnet]") {
    const bool legacy = GENERATE(false, true);
    INFO("--legacy-flags: " << legacy);
    PoolProcess pool(bitnet_pool_args(2, legacy));
    REQUIRE(pool.wait_ready(2, 60s));
    // Chunks of 6000 characters: well over a 512-token slot with this vocabulary.
    std::string text;
    for (int i = 0; text.size() < 14000; ++i) {
        text += "Sentence number " + std::to_string(i) + " tells of rivers and hills. ";
    }
    const json body = {{"text", text},
                       {"max_chunk_chars", 6000},
                       {"overlap", 100},
                       {"n_predict", 16},
                       {"levels", 3}};
    const auto started = SteadyClock::now();
    const auto r = pool.client(600s).Post("/v1/summarize", body.dump(), "application/json");
    REQUIRE(r);
    INFO(r->body.substr(0, 500));
    CHECK(r->status == 200);
    const auto reply = json::parse(r->body);
    CHECK(reply["split_chunks"].get<int>() > 0);
    std::printf("measured (legacy %d): summary of %zu chars, %d chunks split, %lld ms\n", legacy,
                text.size(), reply["split_chunks"].get<int>(), ms_since(started));
    // No prompt reached a worker too long for it: the fork would have said "input truncated".
    CHECK(pool.log_lines_with("input truncated").empty());
}

TEST_CASE("BitNet: a worker killed (-9) under load is replaced, no request fails", "[bitnet]") {
    const bool legacy = GENERATE(false, true);
    INFO("--legacy-flags: " << legacy);
    PoolProcess pool(bitnet_pool_args(2, legacy, {"--restart-backoff-base", "0.1"}));
    REQUIRE(pool.wait_ready(2, 60s));
    const auto pids = pool.worker_pids();
    std::atomic<bool> stop{false};
    std::atomic<int> ok{0}, failed{0};
    std::mutex m;
    std::string failures;
    std::vector<std::thread> clients;
    for (int i = 0; i < 3; ++i) {
        clients.emplace_back([&] {
            while (!stop) {
                httplib::Client cl("127.0.0.1", pool.port());
                cl.set_read_timeout(60s);
                const auto r =
                    cl.Post("/completion", R"({"prompt":"Hi","n_predict":16,"ignore_eos":true})",
                            "application/json");
                if (r && r->status == 200) {
                    ++ok;
                } else {
                    ++failed;
                    std::lock_guard lock(m);
                    failures +=
                        (r ? std::to_string(r->status) + " " + r->body : "no response") + "\n";
                }
            }
        });
    }
    CHECK(wait_until([&] { return ok >= 5; }, 30s));
    const auto killed_at = SteadyClock::now();
    ::kill(pids[0], SIGKILL);
    REQUIRE(wait_until(
        [&] {
            const auto s = pool.status();
            if (s["totals"]["ready"] != 2) {
                return false;
            }
            for (const auto& w : s["workers"]) {
                if (w["pid"] == pids[0]) {
                    return false;
                }
            }
            return true;
        },
        60s));
    std::printf("measured (legacy %d): kill -9 to 2 BitNet workers ready: %lld ms\n", legacy,
                ms_since(killed_at));
    const int before = ok;
    CHECK(wait_until([&] { return ok >= before + 5; }, 30s));
    stop = true;
    for (auto& t : clients) {
        t.join();
    }
    INFO(failures);
    CHECK(failed == 0);
    CHECK(ok > before);
    // The crash report quotes the worker's lines, not its request log.
    for (const auto& w : pool.status()["workers"]) {
        for (const auto& line : w.value("last_output", json::array())) {
            CHECK(line.get<std::string>().find("request: GET /health") == std::string::npos);
        }
    }
}

TEST_CASE("BitNet: SIGTERM stops the pool and leaves no worker behind", "[bitnet]") {
    const bool legacy = GENERATE(false, true);
    INFO("--legacy-flags: " << legacy);
    PoolProcess pool(bitnet_pool_args(2, legacy));
    REQUIRE(pool.wait_ready(2, 60s));
    const auto pids = pool.worker_pids();
    REQUIRE(pids.size() == 2);
    pool.process().signal(SIGTERM);
    CHECK(pool.process().wait_exit(60s) == 0);
    for (const auto pid : pids) {
        CHECK(wait_until([&] { return !process_alive(pid); }, 10s));
    }
}
