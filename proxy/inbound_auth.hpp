#pragma once

#include <optional>
#include <string>
#include <vector>

#include "common/http_message.hpp"

namespace llama_pool {

// The client keys the pool accepts on relayed routes: the configured list plus a key file.
// An empty set means no key is required.
class InboundAuth {
  public:
    explicit InboundAuth(std::vector<std::string> keys) : keys_(std::move(keys)) {}

    bool required() const { return !keys_.empty(); }
    // The key the client presented, when it is one of ours (compared in constant time, and
    // against every key, so the time taken does not say which one nearly matched).
    std::optional<std::string> check(const Headers& headers) const;

  private:
    std::vector<std::string> keys_;
};

// Keys from a file: one per line, blank lines and '#' comments skipped, spaces trimmed.
// Returns false with `error` set when the file cannot be read.
bool load_key_file(const std::string& path, std::vector<std::string>& keys, std::string& error);

}  // namespace llama_pool
