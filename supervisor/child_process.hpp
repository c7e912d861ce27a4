#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.hpp"

namespace llama_pool {

struct ExitInfo {
    int code = -1;   // exit code when it exited normally
    int signal = 0;  // the signal that killed it, else 0
    std::string describe() const;
};

// One child process, its own process group, owned for its whole life (RAII):
// - the kernel kills it if the pool dies, even by SIGKILL (PR_SET_PDEATHSIG, checked against
//   a parent that died before the flag was set);
// - its stdout and stderr are read line by line by a thread this object owns;
// - the destructor kills the group if it still runs, reaps it and joins the reader.
//
// PR_SET_PDEATHSIG fires when the *thread* that forked exits, so construct it only on a
// thread that outlives the process (the worker's owner thread). Not thread-safe; the
// owner thread alone calls it.
class ChildProcess {
  public:
    using LineSink = std::function<void(std::string_view line)>;

    // Throws std::runtime_error when the program cannot be started.
    ChildProcess(const std::string& program, const std::vector<std::string>& args, LineSink on_line,
                 std::function<void()> on_output_closed);
    ~ChildProcess();
    ChildProcess(const ChildProcess&) = delete;
    ChildProcess& operator=(const ChildProcess&) = delete;

    pid_t pid() const;
    // Non-blocking: the exit once it has happened (reaped), else nullopt.
    std::optional<ExitInfo> poll_exit();
    void signal_group(int sig);
    // SIGTERM (and SIGCONT, so a stopped process can act on it), then SIGKILL after `grace`.
    ExitInfo terminate(Duration grace);

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace llama_pool
