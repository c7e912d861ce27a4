#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace llama_pool::test {

using namespace std::chrono_literals;

// A child process for tests: output goes to a temporary file, the destructor kills it.
class TestProcess {
  public:
    TestProcess(const std::string& program, const std::vector<std::string>& args,
                const std::vector<std::pair<std::string, std::string>>& env = {});
    ~TestProcess();
    TestProcess(const TestProcess&) = delete;
    TestProcess& operator=(const TestProcess&) = delete;

    pid_t pid() const { return pid_; }
    bool running();
    void signal(int sig);
    // The exit code (128+signal when killed), or nullopt when still running at the timeout.
    std::optional<int> wait_exit(std::chrono::milliseconds timeout);
    std::string output() const;

  private:
    pid_t pid_ = -1;
    std::string log_path_;
    std::optional<int> exit_code_;
};

// A directory of its own under $TMPDIR (or /tmp), removed with its contents at the end, so
// two test runs on one machine never share a file.
class TempDir {
  public:
    TempDir();
    ~TempDir();
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;

    const std::string& path() const { return path_; }
    // `name` inside the directory (not created).
    std::string file(const std::string& name) const { return path_ + "/" + name; }

  private:
    std::string path_;
};

// Polls `condition` until it holds or `timeout` passes; never sleeps longer than `poll`.
// [[nodiscard]]: a test that waits must say what happens when the wait runs out.
[[nodiscard]] bool wait_until(const std::function<bool()>& condition,
                              std::chrono::milliseconds timeout,
                              std::chrono::milliseconds poll = 20ms);

std::uint16_t free_port();
// Whether a process with this pid exists and is not a zombie.
bool process_alive(pid_t pid);
// The command line of a live process, empty when gone.
std::string process_cmdline(pid_t pid);
std::string env_or_empty(const char* name);

// Sends raw bytes to 127.0.0.1:port and returns everything read until the server closes the
// connection or `timeout` passes. For requests a normal client library refuses to send.
std::string raw_exchange(std::uint16_t port, const std::string& bytes,
                         std::chrono::milliseconds timeout);
// The status code of the first response in raw bytes, 0 when there is none.
int raw_status(const std::string& response);

}  // namespace llama_pool::test
