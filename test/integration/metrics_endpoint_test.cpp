// /metrics of a live pool, after traffic, checked by promtool and for the metrics operators
// and dashboards rely on.
#include <signal.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "test/support/pool_fixture.hpp"

using namespace llama_pool::test;
using json = nlohmann::json;
using namespace std::chrono_literals;

TEST_CASE("a live pool's /metrics passes promtool and has every documented metric",
          "[integration]") {
    PoolProcess pool({"--workers", "2", "--llama-server", FAKE_WORKER_BINARY, "--model",
                      dummy_model_path(), "--health-interval", "0.2"});
    REQUIRE(pool.wait_ready(2, 20s));
    auto c = pool.client();
    for (int i = 0; i < 5; ++i) {
        REQUIRE(
            c.Post("/completion", R"({"prompt":"x","max_tokens":3})", "application/json")->status ==
            200);
    }
    REQUIRE(c.Post("/v1/chat/completions",
                   R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":4,"stream":true})",
                   "application/json")
                ->status == 200);
    REQUIRE(c.Get("/nope")->status == 404);

    // A request's metrics are recorded just after its response went out, so a scrape right
    // behind the last response may precede them by a moment, as it may in production.
    REQUIRE(wait_until(
        [&] {
            const auto m = c.Get("/metrics");
            return m &&
                   m->body.find(
                       "llama_pool_time_to_first_byte_seconds_count{route=\"/v1/chat/"
                       "completions\"} 1") != std::string::npos &&
                   m->body.find("llama_pool_requests_total{route=\"other\",code=\"404\"} 1") !=
                       std::string::npos;
        },
        5s));
    const auto r = c.Get("/metrics");
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(r->get_header_value("Content-Type").rfind("text/plain; version=0.0.4", 0) == 0);
    const auto& text = r->body;
    TempDir dir;
    const auto path = dir.file("metrics.txt");
    std::ofstream(path) << text;
    TestProcess promtool("/bin/sh", {"-c", "promtool check metrics < " + path});
    const auto rc = promtool.wait_exit(30s);
    INFO(promtool.output());
    CHECK(rc == 0);
    CHECK(promtool.output().empty());

    for (const auto* name : {
             "llama_pool_requests_total{route=\"/completion\",code=\"200\"} 5",
             "llama_pool_requests_total{route=\"other\",code=\"404\"} 1",
             "llama_pool_request_duration_seconds_bucket{route=\"/completion\",le=\"+Inf\"} 5",
             "llama_pool_time_to_first_byte_seconds_count{route=\"/v1/chat/completions\"} 1",
             "# TYPE llama_pool_upstream_requests_total counter",
             "# TYPE llama_pool_retries_total counter",
             "# TYPE llama_pool_rejected_total counter",
             "llama_pool_queue_depth 0",
             "llama_pool_queue_wait_seconds_count",
             "llama_pool_inflight_requests{worker=\"0\"}",
             "llama_pool_worker_capacity{worker=\"0\"} 2",
             "llama_pool_worker_state{worker=\"0\",state=\"ready\"} 1",
             "llama_pool_worker_state{worker=\"0\",state=\"failed\"} 0",
             "# TYPE llama_pool_worker_restarts_total counter",
             "llama_pool_breaker_state{worker=\"0\"} 0",
             "llama_pool_upstream_connections_opened_total{worker=\"0\"}",
             "llama_pool_client_disconnects_total 0",
             "llama_pool_tokens_predicted_total{worker=",
             "llama_pool_prompt_tokens_total{worker=",
             "llama_pool_build_info{version=",
             // cache and Idempotency-Key families exist with the cache off, all results at 0
             "llama_pool_cache_lookups_total{result=\"hit\"} 0",
             "llama_pool_cache_lookups_total{result=\"miss\"} 0",
             "llama_pool_cache_lookups_total{result=\"bypass\"} 0",
             "llama_pool_cache_entries 0",
             "llama_pool_cache_bytes 0",
             "llama_pool_cache_evictions_total{reason=\"capacity\"} 0",
             "llama_pool_idempotent_requests_total{result=\"attached\"} 0",
             "llama_pool_idempotency_keys{state=\"in_flight\"} 0",
             "llama_pool_idempotency_bytes 0",
             "process_resident_memory_bytes",
             "process_cpu_seconds_total",
             "process_open_fds",
             "process_start_time_seconds",
             // the workers' own metrics, one scrape target for the whole pool
             "llamacpp_requests_processing{worker=\"0\"}",
             "llamacpp_requests_processing{worker=\"1\"}",
         }) {
        INFO(name);
        CHECK(text.find(name) != std::string::npos);
    }
    // Tokens from non-stream replies and from the stream's last event: 5 x 3 + 4.
    double predicted = 0;
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line);) {
        if (line.rfind("llama_pool_tokens_predicted_total{", 0) == 0) {
            predicted += std::stod(line.substr(line.rfind(' ') + 1));
        }
    }
    CHECK(predicted == 19);
}

TEST_CASE("/pool/status and /metrics show the same slot count for a worker out of rotation",
          "[integration]") {
    // Issue 17, item 5: both read the backend registry. /pool/status used to show the
    // supervisor's copy, so a ready worker taken out of rotation by a failed probe kept its
    // slots there while /metrics showed none.
    PoolProcess pool(fake_pool_args(1, {"--health-timeout", "0.3", "--health-failures", "100"},
                                    {"--parallel", "3"}));
    REQUIRE(pool.wait_ready(1, 20s));
    auto c = pool.client(5s);
    const auto metric_slots = [&]() -> std::string {
        const auto m = c.Get("/metrics");
        if (!m) {
            return "";
        }
        const std::string key = "llama_pool_worker_capacity{worker=\"0\"} ";
        const auto at = m->body.find(key);
        return at == std::string::npos ? "" : m->body.substr(at + key.size(), 1);
    };
    auto s = pool.status();
    CHECK(s["workers"][0]["slots"] == 3);
    CHECK(s["totals"]["slots"] == 3);
    CHECK(metric_slots() == "3");
    // Frozen, the worker misses probes: out of rotation, still in state ready (100 misses
    // are allowed before a restart).
    const int pid = pool.worker_pids().at(0);
    ::kill(pid, SIGSTOP);
    const bool out = wait_until(
        [&] {
            s = pool.status();
            return s.contains("workers") && !s["workers"][0]["available"].get<bool>();
        },
        20s);
    const auto slots_while_out = metric_slots();
    ::kill(pid, SIGCONT);
    REQUIRE(out);
    CHECK(s["workers"][0]["state"] == "ready");
    CHECK(s["workers"][0]["slots"] == 0);
    CHECK(s["totals"]["slots"] == 0);
    CHECK(slots_while_out == "0");
}
