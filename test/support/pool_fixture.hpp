#pragma once

#include <httplib.h>

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "test/support/test_process.hpp"

namespace llama_pool::test {

// A llama-pool process on a port of its own, with helpers to talk to it. The pool binds
// port 0 and the kernel picks the port; port() reads it from the pool's "listening" line, so
// no other process can take it between a pick and the bind.
class PoolProcess {
  public:
    explicit PoolProcess(std::vector<std::string> args);
    // Runs the pool through `launcher` first, e.g. a shell that lowers its descriptor limit:
    // {"/bin/sh", "-c", "ulimit -n 128 && exec \"$0\" \"$@\""}.
    PoolProcess(std::vector<std::string> args, std::vector<std::string> launcher);
    ~PoolProcess();

    // Waits (bounded) for the pool to say where it listens; 0 when it never did.
    std::uint16_t port() const;
    TestProcess& process() { return *process_; }
    httplib::Client client(std::chrono::seconds read_timeout = std::chrono::seconds(60)) const;
    nlohmann::json status() const;
    // Waits until `n` workers are ready; fails the test with the pool's output otherwise.
    bool wait_ready(int n, std::chrono::milliseconds timeout);
    // Waits until the pool answers HTTP at all (whatever its workers are doing).
    bool wait_listening(std::chrono::milliseconds timeout);
    std::vector<int> worker_pids() const;
    // The pool's log lines that contain `needle`, for failure messages.
    std::string log_lines_with(const std::string& needle) const;

  private:
    mutable std::uint16_t port_ = 0;
    std::unique_ptr<TestProcess> process_;
};

// A file that exists, for --model when the workers are fakes that do not read it.
std::string dummy_model_path();

// Arguments for a pool of `workers` fake workers with test-speed timings (fast probes,
// short backoffs), plus `extra` pool flags and `worker_args` passed to every worker.
std::vector<std::string> fake_pool_args(int workers, std::vector<std::string> extra = {},
                                        std::vector<std::string> worker_args = {});

// The value of the first sample line of a Prometheus exposition that starts with `prefix`
// (labels included), or -1 when there is none.
double metric_value(const std::string& exposition, const std::string& prefix);

// Milliseconds since `t`, for the measurements that end-to-end tests print (never assert).
long long ms_since(std::chrono::steady_clock::time_point t);

// POSTs a JSON body and hands each piece of the response body to `on_data` as it arrives.
// Returns the response (status 0 when the exchange failed).
httplib::Response stream_post(httplib::Client& client, const std::string& path,
                              const std::string& body,
                              const std::function<void(std::string_view)>& on_data);

}  // namespace llama_pool::test
