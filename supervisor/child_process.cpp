#include "supervisor/child_process.hpp"

#include <fmt/format.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/process.hpp>
#include <boost/process/extend.hpp>
#include <stdexcept>
#include <thread>

namespace llama_pool {

namespace bp = boost::process;

std::string ExitInfo::describe() const {
    if (signal != 0) {
        return fmt::format("killed by signal {} ({})", signal, ::strsignal(signal));
    }
    return fmt::format("exited with code {}", code);
}

namespace {

// Runs in the child between fork and exec. Only async-signal-safe calls here.
struct ChildSetup : bp::extend::handler {
    pid_t parent;
    template <class Executor>
    void on_exec_setup(Executor&) const {
        ::setpgid(0, 0);
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (::getppid() != parent) {
            ::_exit(127);  // the pool died before the death signal was armed
        }
        // The pool blocks its termination signals for sigwait() and ignores SIGPIPE; both
        // survive exec, and a worker that cannot receive SIGTERM would never stop cleanly.
        sigset_t none;
        ::sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        ::signal(SIGPIPE, SIG_DFL);
        // Descriptors another thread opened without O_CLOEXEC (another worker's pipe) must
        // not leak into this child, or that worker's output would never see EOF.
        ::close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
    }
};

ExitInfo decode(int status) {
    ExitInfo info;
    if (WIFSIGNALED(status)) {
        info.signal = WTERMSIG(status);
    } else if (WIFEXITED(status)) {
        info.code = WEXITSTATUS(status);
    }
    return info;
}

}  // namespace

struct ChildProcess::Impl {
    bp::ipstream output;
    bp::child child;
    std::thread reader;
    std::optional<ExitInfo> exit;
};

ChildProcess::ChildProcess(const std::string& program, const std::vector<std::string>& args,
                           LineSink on_line, std::function<void()> on_output_closed)
    : impl_(std::make_unique<Impl>()) {
    ChildSetup setup;
    setup.parent = ::getpid();
    std::error_code ec;
    impl_->child =
        bp::child(bp::exe = program, bp::args = args, (bp::std_out & bp::std_err) > impl_->output,
                  bp::std_in < bp::null, setup, ec);
    if (ec) {
        throw std::runtime_error(fmt::format("cannot start {}: {}", program, ec.message()));
    }
    impl_->reader =
        std::thread([this, on_line = std::move(on_line), on_closed = std::move(on_output_closed)] {
            std::string line;
            while (std::getline(impl_->output, line)) {
                if (!line.empty() && line.back() == '\r') {
                    line.pop_back();
                }
                on_line(line);
            }
            if (on_closed) {
                on_closed();
            }
        });
}

ChildProcess::~ChildProcess() {
    if (!poll_exit()) {
        signal_group(SIGKILL);
        int status = 0;
        while (::waitpid(pid(), &status, 0) < 0 && errno == EINTR) {
        }
        impl_->exit = decode(status);
        impl_->child.detach();  // reaped by hand above; stops Boost from waiting again
    }
    if (impl_->reader.joinable()) {
        impl_->reader.join();
    }
}

pid_t ChildProcess::pid() const {
    return impl_->child.id();
}

std::optional<ExitInfo> ChildProcess::poll_exit() {
    if (impl_->exit) {
        return impl_->exit;
    }
    int status = 0;
    const auto rc = ::waitpid(pid(), &status, WNOHANG);
    if (rc == pid()) {
        impl_->exit = decode(status);
        impl_->child.detach();
    }
    return impl_->exit;
}

void ChildProcess::signal_group(int sig) {
    if (!impl_->exit) {
        ::kill(-pid(), sig);
    }
}

ExitInfo ChildProcess::terminate(Duration grace) {
    if (auto done = poll_exit()) {
        return *done;
    }
    signal_group(SIGTERM);
    signal_group(SIGCONT);
    const auto deadline = Clock::now() + grace;
    while (Clock::now() < deadline) {
        if (auto done = poll_exit()) {
            return *done;
        }
        std::this_thread::sleep_for(milliseconds(10));
    }
    signal_group(SIGKILL);
    while (!poll_exit()) {
        std::this_thread::sleep_for(milliseconds(5));
    }
    return *impl_->exit;
}

}  // namespace llama_pool
