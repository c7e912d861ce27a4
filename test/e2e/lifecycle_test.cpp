// The worker lifecycle against real llama-server processes: crashes, hangs, bad models,
// shutdown with work in flight, rolling restarts. Measured times are printed for the record;
// the assertions are about behaviour, not speed.
#include <signal.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "test/support/pool_fixture.hpp"
#include "test/support/real_worker.hpp"

using namespace llama_pool::test;
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

using SteadyClock = std::chrono::steady_clock;

json worker_by_pid(const json& status, int pid) {
    for (const auto& w : status.value("workers", json::array())) {
        if (w["pid"] == pid) {
            return w;
        }
    }
    return json();
}

// Sends completions from `clients` threads until stopped; counts every outcome.
class SteadyLoad {
  public:
    SteadyLoad(std::uint16_t port, int clients, int n_predict = 8) {
        const auto body =
            R"({"prompt":"Hi","ignore_eos":true,"n_predict":)" + std::to_string(n_predict) + "}";
        for (int i = 0; i < clients; ++i) {
            threads_.emplace_back([this, port, body] {
                while (!stop_) {
                    httplib::Client c("127.0.0.1", port);
                    c.set_read_timeout(60s);
                    const auto r = c.Post("/completion", body, "application/json");
                    if (r && r->status == 200) {
                        ++ok_;
                    } else {
                        ++failed_;
                        std::lock_guard lock(mutex_);
                        failures_.push_back(r ? std::to_string(r->status) + " " + r->body
                                              : "no response");
                    }
                }
            });
        }
    }
    ~SteadyLoad() { stop(); }
    void stop() {
        stop_ = true;
        for (auto& t : threads_) {
            if (t.joinable()) {
                t.join();
            }
        }
    }
    int ok() const { return ok_; }
    int failed() const { return failed_; }
    std::string failures() {
        std::lock_guard lock(mutex_);
        std::string out;
        for (const auto& f : failures_) {
            out += f.substr(0, 200) + "\n";
        }
        return out;
    }

  private:
    std::atomic<bool> stop_{false};
    std::atomic<int> ok_{0};
    std::atomic<int> failed_{0};
    std::mutex mutex_;
    std::vector<std::string> failures_;
    std::vector<std::thread> threads_;
};

}  // namespace

TEST_CASE("a killed worker is replaced while the other one serves", "[e2e]") {
    const auto started = SteadyClock::now();
    PoolProcess pool(real_pool_args(2, {"--restart-backoff-base", "0.1"}));
    REQUIRE(pool.wait_ready(2, 60s));
    std::printf("measured: pool start to 2 workers ready: %lld ms (%s)\n", ms_since(started),
                pool.status()["workers"][0]["detail"].get<std::string>().c_str());
    const auto pids = pool.worker_pids();
    SteadyLoad load(pool.port(), 2);
    CHECK(wait_until([&] { return load.ok() >= 5; }, 30s));
    const auto killed_at = SteadyClock::now();
    ::kill(pids[0], SIGKILL);
    REQUIRE(wait_until(
        [&] {
            const auto s = pool.status();
            return s["totals"]["ready"] == 2 && worker_by_pid(s, pids[0]).is_null();
        },
        60s));
    std::printf("measured: kill -9 to ready again: %lld ms\n", ms_since(killed_at));
    const int before = load.ok();
    CHECK(wait_until([&] { return load.ok() >= before + 5; }, 30s));
    load.stop();
    INFO(load.failures());
    CHECK(load.failed() == 0);
    CHECK(load.ok() > before);
}

TEST_CASE("a stopped (SIGSTOP) worker leaves rotation and is replaced", "[e2e]") {
    PoolProcess pool(real_pool_args(
        2, {"--health-interval", "0.5", "--health-timeout", "0.5", "--health-failures", "2",
            "--stop-grace", "1", "--restart-backoff-base", "0.1"}));
    REQUIRE(pool.wait_ready(2, 60s));
    const auto pids = pool.worker_pids();
    const auto stopped_at = SteadyClock::now();
    ::kill(pids[0], SIGSTOP);
    REQUIRE(wait_until(
        [&] {
            const auto w = worker_by_pid(pool.status(), pids[0]);
            return w.is_null() || !w["available"].get<bool>();
        },
        10s, 10ms));
    std::printf("measured: SIGSTOP to out of rotation: %lld ms\n", ms_since(stopped_at));
    // The pool keeps serving on the other worker meanwhile.
    for (int i = 0; i < 3; ++i) {
        const auto r = pool.client(30s).Post("/completion", R"({"prompt":"Hi","n_predict":4})",
                                             "application/json");
        REQUIRE(r);
        CHECK(r->status == 200);
    }
    REQUIRE(wait_until(
        [&] {
            const auto s = pool.status();
            return s["totals"]["ready"] == 2 && worker_by_pid(s, pids[0]).is_null();
        },
        30s));
    std::printf("measured: SIGSTOP to replaced and ready: %lld ms\n", ms_since(stopped_at));
    CHECK(wait_until([&] { return !process_alive(pids[0]); }, 5s));
}

TEST_CASE("a bad model file is reported with its path, then the worker fails for good", "[e2e]") {
    TempDir dir;
    const auto bad = dir.file("bad-model.gguf");
    std::ofstream(bad) << "this is not a GGUF file";
    auto args = real_pool_args(1, {"--crash-loop-restarts", "3", "--restart-backoff-base", "0.1",
                                   "--restart-backoff-cap", "0.2"});
    const auto model_flag = std::find(args.begin(), args.end(), "--model");
    *(model_flag + 1) = bad;
    const auto started = SteadyClock::now();
    PoolProcess pool(args);
    REQUIRE(wait_until(
        [&] {
            const auto s = pool.status();
            return !s.value("workers", json::array()).empty() &&
                   !s["workers"][0]["last_exit_reason"].get<std::string>().empty();
        },
        10s, 10ms));
    const auto first_report_ms = ms_since(started);
    // How soon is printed, not asserted (it depends on the machine); the wait above bounds a
    // hang.
    std::printf("measured: bad model reported %lld ms after start\n", first_report_ms);
    const auto w = pool.status()["workers"][0];
    CHECK(w["last_exit_reason"].get<std::string>().find("exited during start-up") !=
          std::string::npos);
    CHECK(w["last_output"].dump().find(bad) != std::string::npos);
    REQUIRE(wait_until([&] { return pool.status()["workers"][0]["state"] == "failed"; }, 20s));
    CHECK(pool.process().output().find("worker_gave_up") != std::string::npos);
}

TEST_CASE("SIGKILL of the pool leaves no real llama-server behind", "[e2e]") {
    PoolProcess pool(real_pool_args(2));
    REQUIRE(pool.wait_ready(2, 60s));
    const auto pids = pool.worker_pids();
    REQUIRE(pids.size() == 2);
    pool.process().signal(SIGKILL);
    pool.process().wait_exit(5s);
    for (const auto pid : pids) {
        CHECK(wait_until([&] { return !process_alive(pid); }, 5s));
    }
}

TEST_CASE("SIGTERM lets a long stream finish, then the pool exits 0", "[e2e]") {
    // The grace is far longer than the stream needs, even on a loaded machine; past the grace
    // the pool cuts streams short by design.
    PoolProcess pool(
        real_pool_args(1, {"--ctx-size", "4096", "--parallel", "1", "--shutdown-grace", "300"}));
    REQUIRE(pool.wait_ready(1, 60s));
    const auto pid = pool.worker_pids().at(0);
    std::string received;
    std::mutex m;
    std::thread client([&] {
        auto c = pool.client(300s);
        stream_post(c, "/completion",
                    R"({"prompt":"Once","n_predict":1500,"ignore_eos":true,"stream":true})",
                    [&](std::string_view piece) {
                        std::lock_guard lock(m);
                        received.append(piece);
                    });
    });
    REQUIRE(wait_until(
        [&] {
            std::lock_guard lock(m);
            return received.find("data: ") != std::string::npos;
        },
        30s, 5ms));
    pool.process().signal(SIGTERM);
    client.join();
    CHECK(pool.process().wait_exit(300s) == 0);
    std::lock_guard lock(m);
    CHECK(received.find("\"stop\":true") != std::string::npos);
    CHECK(received.find("\"tokens_predicted\":1500") != std::string::npos);
    CHECK_FALSE(process_alive(pid));
}

TEST_CASE("a rolling restart under steady load fails no request", "[e2e]") {
    PoolProcess pool(real_pool_args(2));
    REQUIRE(pool.wait_ready(2, 60s));
    const auto old_pids = pool.worker_pids();
    SteadyLoad load(pool.port(), 3);
    CHECK(wait_until([&] { return load.ok() >= 5; }, 30s));
    const auto r = pool.client().Post("/pool/restart", "", "application/json");
    REQUIRE(r);
    CHECK(r->status == 202);
    REQUIRE(wait_until(
        [&] {
            const auto s = pool.status();
            if (s["totals"]["ready"] != 2 || s["workers"].size() != 2) {
                return false;
            }
            for (const auto& w : s["workers"]) {
                if (std::find(old_pids.begin(), old_pids.end(), w["pid"].get<int>()) !=
                    old_pids.end()) {
                    return false;
                }
            }
            return true;
        },
        120s));
    const int during = load.ok();
    CHECK(wait_until([&] { return load.ok() >= during + 5; }, 30s));
    load.stop();
    INFO(load.failures());
    CHECK(load.failed() == 0);
    std::printf("measured: rolling restart under load: %d requests ok, %d failed\n", load.ok(),
                load.failed());
    for (const auto pid : old_pids) {
        CHECK_FALSE(process_alive(pid));
    }
}

TEST_CASE("more clients than slots never push a worker past its capacity", "[e2e]") {
    PoolProcess pool(real_pool_args(2));  // 2 workers x 2 slots
    REQUIRE(pool.wait_ready(2, 60s));
    SteadyLoad load(pool.port(), 6, 64);
    int max_busy_per_worker = 0, max_inflight_per_worker = 0, samples = 0;
    const auto until = SteadyClock::now() + 4s;
    while (SteadyClock::now() < until) {
        std::map<std::string, int> busy;
        const auto slots = json::parse(pool.client(5s).Get("/slots")->body);
        for (const auto& s : slots) {
            busy[s["worker"].get<std::string>()] += s["is_processing"].get<bool>() ? 1 : 0;
        }
        for (const auto& [worker, n] : busy) {
            max_busy_per_worker = std::max(max_busy_per_worker, n);
        }
        const auto status = pool.status();  // a named value: the range must outlive the loop
        for (const auto& w : status["workers"]) {
            max_inflight_per_worker = std::max(max_inflight_per_worker, w["inflight"].get<int>());
            CHECK(w["inflight"].get<int>() <= w["slots"].get<int>());
        }
        ++samples;
    }
    load.stop();
    std::printf(
        "measured: %d samples, max busy slots per worker %d, max in flight per worker %d, %d "
        "requests ok\n",
        samples, max_busy_per_worker, max_inflight_per_worker, load.ok());
    CHECK(load.failed() == 0);
    CHECK(max_inflight_per_worker == 2);  // the load did fill the workers...
    CHECK(max_busy_per_worker <= 2);      // ...and never beyond their slots
    // The load has stopped: nothing is left waiting in the pool's queue.
    CHECK(wait_until([&] { return pool.status()["totals"]["queued"].get<int>() == 0; }, 10s));
}
