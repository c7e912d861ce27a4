#include "test/support/pool_fixture.hpp"

#include <catch2/catch.hpp>
#include <regex>
#include <sstream>

namespace llama_pool::test {

PoolProcess::PoolProcess(std::vector<std::string> args) : PoolProcess(std::move(args), {}) {}

PoolProcess::PoolProcess(std::vector<std::string> args, std::vector<std::string> launcher) {
    // First, so that a test's own --port (later on the line) wins.
    args.insert(args.begin(), {"--port", "0"});
    if (launcher.empty()) {
        process_ = std::make_unique<TestProcess>(LLAMA_POOL_BINARY, args);
        return;
    }
    const auto program = launcher.front();
    launcher.erase(launcher.begin());
    launcher.emplace_back(LLAMA_POOL_BINARY);
    launcher.insert(launcher.end(), args.begin(), args.end());
    process_ = std::make_unique<TestProcess>(program, launcher);
}

PoolProcess::~PoolProcess() {
    if (process_->running()) {
        process_->signal(SIGTERM);
        if (!process_->wait_exit(std::chrono::seconds(20))) {
            process_->signal(SIGKILL);
        }
    }
}

std::uint16_t PoolProcess::port() const {
    if (port_ != 0) {
        return port_;
    }
    // The text and the JSON log formats: `event=listening ... port=N` or `"port":N`.
    static const std::regex listening(
        R"((event=listening|"event":"listening").*?\bport"?[=:](\d+))");
    const auto found = [&] {
        std::istringstream in(process_->output());
        std::smatch m;
        for (std::string line; std::getline(in, line);) {
            if (std::regex_search(line, m, listening)) {
                port_ = static_cast<std::uint16_t>(std::stoi(m[2].str()));
                return true;
            }
        }
        return false;
    };
    if (!wait_until(found, std::chrono::seconds(30), std::chrono::milliseconds(10))) {
        UNSCOPED_INFO("the pool never said where it listens; its output:\n" << process_->output());
    }
    return port_;
}

httplib::Client PoolProcess::client(std::chrono::seconds read_timeout) const {
    httplib::Client c("127.0.0.1", port());
    c.set_read_timeout(read_timeout);
    c.set_connection_timeout(std::chrono::seconds(5));
    return c;
}

nlohmann::json PoolProcess::status() const {
    auto c = client(std::chrono::seconds(5));
    const auto r = c.Get("/pool/status");
    if (!r || r->status != 200) {
        return nlohmann::json::object();
    }
    return nlohmann::json::parse(r->body, nullptr, false);
}

bool PoolProcess::wait_ready(int n, std::chrono::milliseconds timeout) {
    const bool ok = wait_until(
        [&] {
            const auto s = status();
            return s.contains("totals") && s["totals"]["ready"].get<int>() >= n;
        },
        timeout, std::chrono::milliseconds(50));
    if (!ok) {
        UNSCOPED_INFO("pool output:\n" << process_->output());
    }
    return ok;
}

bool PoolProcess::wait_listening(std::chrono::milliseconds timeout) {
    return wait_until(
        [&] { return static_cast<bool>(client(std::chrono::seconds(2)).Get("/health")); }, timeout,
        std::chrono::milliseconds(20));
}

std::vector<int> PoolProcess::worker_pids() const {
    std::vector<int> pids;
    for (const auto& w : status().value("workers", nlohmann::json::array())) {
        if (w["pid"].get<int>() > 0) {
            pids.push_back(w["pid"].get<int>());
        }
    }
    return pids;
}

std::string PoolProcess::log_lines_with(const std::string& needle) const {
    std::istringstream in(process_->output());
    std::string line, out;
    while (std::getline(in, line)) {
        if (line.find(needle) != std::string::npos) {
            out += line + "\n";
        }
    }
    return out;
}

double metric_value(const std::string& exposition, const std::string& prefix) {
    for (auto at = exposition.find(prefix); at != std::string::npos;
         at = exposition.find(prefix, at + 1)) {
        if (at != 0 && exposition[at - 1] != '\n') {
            continue;
        }
        const auto end = exposition.find('\n', at);
        const auto line = exposition.substr(at, end - at);
        return std::stod(line.substr(line.rfind(' ') + 1));
    }
    return -1;
}

long long ms_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                 t)
        .count();
}

std::string dummy_model_path() {
    return LLAMA_POOL_BINARY;
}

std::vector<std::string> fake_pool_args(int workers, std::vector<std::string> extra,
                                        std::vector<std::string> worker_args) {
    std::vector<std::string> args = {"--workers",
                                     std::to_string(workers),
                                     "--llama-server",
                                     FAKE_WORKER_BINARY,
                                     "--model",
                                     dummy_model_path(),
                                     "--health-interval",
                                     "0.2",
                                     "--restart-backoff-base",
                                     "0.05",
                                     "--restart-backoff-cap",
                                     "0.2",
                                     "--retry-backoff-base",
                                     "0.01",
                                     "--retry-backoff-cap",
                                     "0.05",
                                     "--stop-grace",
                                     "2"};
    args.insert(args.end(), extra.begin(), extra.end());
    for (const auto& a : worker_args) {
        args.push_back("--worker-arg");
        args.push_back(a);
    }
    return args;
}

httplib::Response stream_post(httplib::Client& client, const std::string& path,
                              const std::string& body,
                              const std::function<void(std::string_view)>& on_data) {
    httplib::Request req;
    req.method = "POST";
    req.path = path;
    req.body = body;
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
        on_data(std::string_view(data, len));
        return true;
    };
    httplib::Response res;
    httplib::Error err;
    if (!client.send(req, res, err)) {
        res.status = 0;
    }
    return res;
}

}  // namespace llama_pool::test
