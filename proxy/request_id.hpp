#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace llama_pool {

// An incoming X-Request-Id is kept when it is safe to echo in headers and logs: 1 to 128
// characters from [A-Za-z0-9._:-]. Anything else (a header injection attempt, a huge
// value) is replaced by a fresh id, so a client cannot forge log lines or response headers.
bool is_acceptable_request_id(std::string_view id);

// Fresh ids for requests that bring none: 16 hex digits. A counter from a random start, passed
// through a bijective mix, so ids never repeat within a process, differ across restarts, and
// cost no system call per request (the benchmark's profile counted one getrandom per request
// before). They correlate log lines; they are not secrets.
class RequestIds {
  public:
    RequestIds();  // the start is drawn from the kernel's random source
    explicit RequestIds(std::uint64_t start) : start_(start) {}

    std::string next();
    // The incoming id when it is acceptable, else a fresh one.
    std::string for_request(std::optional<std::string_view> incoming);

  private:
    std::uint64_t start_;
    std::atomic<std::uint64_t> counter_{0};
};

}  // namespace llama_pool
