#include "test/support/test_process.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "common/socket.hpp"

namespace llama_pool::test {

TestProcess::TestProcess(const std::string& program, const std::vector<std::string>& args,
                         const std::vector<std::pair<std::string, std::string>>& env) {
    char path[] = "/tmp/llama-pool-test-XXXXXX";
    const int fd = ::mkstemp(path);
    log_path_ = path;
    std::vector<std::string> argv_storage = {program};
    argv_storage.insert(argv_storage.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : argv_storage) {
        argv.push_back(a.data());
    }
    argv.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ == 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
        ::setpgid(0, 0);
        for (const auto& [k, v] : env) {
            ::setenv(k.c_str(), v.c_str(), 1);
        }
        ::execv(program.c_str(), argv.data());
        ::_exit(127);
    }
    ::close(fd);
}

TestProcess::~TestProcess() {
    if (running()) {
        ::kill(pid_, SIGKILL);
        wait_exit(5s);
    }
    ::unlink(log_path_.c_str());
}

bool TestProcess::running() {
    if (exit_code_) {
        return false;
    }
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        return false;
    }
    return true;
}

void TestProcess::signal(int sig) {
    if (running()) {
        ::kill(pid_, sig);
    }
}

std::optional<int> TestProcess::wait_exit(std::chrono::milliseconds timeout) {
    if (!wait_until([&] { return !running(); }, timeout, 10ms)) {
        return std::nullopt;  // still running
    }
    return exit_code_;
}

std::string TestProcess::output() const {
    std::ifstream in(log_path_);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

TempDir::TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern =
        std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/llama-pool-test-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) {
        throw std::runtime_error("mkdtemp failed for " + pattern);
    }
    path_ = pattern;
}

TempDir::~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
}

bool wait_until(const std::function<bool()>& condition, std::chrono::milliseconds timeout,
                std::chrono::milliseconds poll) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
        if (condition()) {
            return true;
        }
        if (std::chrono::steady_clock::now() >= deadline) {
            return false;
        }
        std::this_thread::sleep_for(poll);
    }
}

std::uint16_t free_port() {
    return pick_free_port("127.0.0.1");
}

bool process_alive(pid_t pid) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    if (!std::getline(stat, line)) {
        return false;
    }
    const auto close_paren = line.rfind(')');
    return close_paren != std::string::npos && close_paren + 2 < line.size() &&
           line[close_paren + 2] != 'Z';
}

std::string process_cmdline(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline");
    std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    for (auto& c : s) {
        if (c == '\0') {
            c = ' ';
        }
    }
    return s;
}

std::string raw_exchange(std::uint16_t port, const std::string& bytes,
                         std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::string error;
    auto fd = connect_tcp("127.0.0.1", port, deadline, error);
    if (!fd.valid()) {
        return {};
    }
    write_all(fd.get(), bytes, deadline);
    std::string out;
    char buf[4096];
    while (true) {
        std::size_t n = 0;
        if (read_some(fd.get(), buf, sizeof buf, n, deadline) != IoStatus::ok) {
            break;
        }
        out.append(buf, n);
    }
    return out;
}

int raw_status(const std::string& response) {
    if (response.rfind("HTTP/1.", 0) != 0 || response.size() < 12) {
        return 0;
    }
    return std::atoi(response.substr(9, 3).c_str());
}

std::string env_or_empty(const char* name) {
    const char* v = std::getenv(name);
    return v ? v : "";
}

}  // namespace llama_pool::test
