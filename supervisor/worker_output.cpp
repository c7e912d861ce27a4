#include "supervisor/worker_output.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cctype>

namespace llama_pool {

namespace {

std::string lowered(std::string_view s) {
    std::string out(s);
    std::transform(out.begin(), out.end(), out.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return out;
}

bool contains_any(const std::string& haystack, std::initializer_list<std::string_view> needles) {
    return std::any_of(needles.begin(), needles.end(),
                       [&](std::string_view n) { return haystack.find(n) != std::string::npos; });
}

}  // namespace

const char* to_string(OutputLineKind kind) {
    switch (kind) {
        case OutputLineKind::startup:
            return "startup";
        case OutputLineKind::warning:
            return "warning";
        case OutputLineKind::error:
            return "error";
        case OutputLineKind::other:
            break;
    }
    return "other";
}

LogLevel log_level_for(OutputLineKind kind) {
    switch (kind) {
        case OutputLineKind::startup:
            return LogLevel::info;
        case OutputLineKind::warning:
            return LogLevel::warn;
        case OutputLineKind::error:
            return LogLevel::error;
        case OutputLineKind::other:
            break;
    }
    return LogLevel::debug;
}

bool is_request_log_line(std::string_view line) {
    // "request: GET /health 127.0.0.1 200", after a prefix in current llama-server
    // ("srv  log_server_r: request: ...").
    const auto at = line.find("request: ");
    if (at == std::string_view::npos) {
        return false;
    }
    const auto rest = line.substr(at + 9);
    constexpr std::array<std::string_view, 6> methods = {"GET ",  "POST ",   "PUT ",
                                                         "HEAD ", "DELETE ", "OPTIONS "};
    return std::any_of(methods.begin(), methods.end(),
                       [&](std::string_view m) { return rest.rfind(m, 0) == 0; });
}

OutputLineKind classify_worker_line(std::string_view line, bool starting) {
    if (is_request_log_line(line)) {
        // Health probes during start-up too. A request that failed shows as its own error
        // line ("got exception: ...").
        return OutputLineKind::other;
    }
    const auto l = lowered(line);
    if (contains_any(l, {"error", "exception", "failed", "fatal", "abort", "segmentation fault",
                         "terminate called", "out of memory", "cannot ", "unable to"})) {
        return OutputLineKind::error;
    }
    // "input truncated": BitNet's fork cuts a prompt over the slot context without failing
    // the request; the pool's log must show it. Not a bare "truncated": current llama-server
    // ends every request with "stop processing: ..., truncated = 0".
    if (contains_any(l, {"warn", "deprecated", "input truncated", "truncated = 1"})) {
        return OutputLineKind::warning;
    }
    return starting ? OutputLineKind::startup : OutputLineKind::other;
}

void OutputRing::clear() {
    head_.clear();
    tail_.clear();
    dropped_ = 0;
}

void OutputRing::add(std::string_view line) {
    if (head_.size() < head_capacity_) {
        head_.emplace_back(line);
        return;
    }
    tail_.emplace_back(line);
    if (tail_.size() > tail_capacity_) {
        tail_.pop_front();
        ++dropped_;
    }
}

std::vector<std::string> OutputRing::lines() const {
    std::vector<std::string> out(head_.begin(), head_.end());
    if (dropped_ > 0) {
        out.push_back(fmt::format("[llama-pool: {} lines left out]", dropped_));
    }
    out.insert(out.end(), tail_.begin(), tail_.end());
    return out;
}

std::vector<std::string> OutputRing::report_tail(std::size_t n) const {
    std::vector<std::string> out;
    const auto take = [&](const auto& lines) {
        for (auto it = lines.rbegin(); it != lines.rend() && out.size() < n; ++it) {
            if (!is_request_log_line(*it)) {
                out.push_back(*it);
            }
        }
    };
    take(tail_);
    take(head_);
    std::reverse(out.begin(), out.end());
    return out;
}

}  // namespace llama_pool
