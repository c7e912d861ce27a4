#pragma once

#include <cstddef>
#include <deque>
#include <string>
#include <string_view>
#include <vector>

#include "common/log.hpp"

namespace llama_pool {

// What one line of a worker's output is worth to the pool's own log. llama-server (BitNet's
// fork even more) prints a line per request, health probes included; copied at info they
// drown what matters. Pure.
enum class OutputLineKind {
    startup,  // printed while the worker starts: why it started badly, if it did
    warning,
    error,
    other  // routine: request logs, timings, slot chatter
};
const char* to_string(OutputLineKind kind);

// `starting`: the worker has not yet become ready since it was spawned. Errors and warnings
// win over start-up, so that they keep their level.
OutputLineKind classify_worker_line(std::string_view line, bool starting);

// The pool's log level for a worker line of that kind: start-up at info, warnings and errors
// at theirs, the rest at debug.
LogLevel log_level_for(OutputLineKind kind);

// llama-server's access-log line ("request: GET /health 127.0.0.1 200"), in either dialect:
// never worth quoting in a crash report.
bool is_request_log_line(std::string_view line);

// A worker's recent output for /pool/workers/{id}/log and crash reports: the first
// `head_lines` of the current start kept for good (they say how it started), then the last
// `tail_lines`, with a marker where lines were left out. Not thread-safe.
class OutputRing {
  public:
    OutputRing(std::size_t head_lines, std::size_t tail_lines)
        : head_capacity_(head_lines), tail_capacity_(tail_lines) {}

    void clear();  // a new start
    void add(std::string_view line);
    // Head, marker (when lines were dropped), tail.
    std::vector<std::string> lines() const;
    // The last `n` lines that are not request logs, for a crash report.
    std::vector<std::string> report_tail(std::size_t n) const;

  private:
    std::size_t head_capacity_;
    std::size_t tail_capacity_;
    std::vector<std::string> head_;
    std::deque<std::string> tail_;
    std::size_t dropped_ = 0;
};

}  // namespace llama_pool
