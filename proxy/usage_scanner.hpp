#pragma once

#include <string>
#include <string_view>

namespace llama_pool {

// Reads token counts out of a relayed response without holding it: it keeps only a bounded
// tail, since llama-server puts usage and timings at the end (the last SSE event of a
// stream, the closing fields of a JSON reply). Understands llama-server's native fields
// (tokens_predicted, tokens_evaluated), OpenAI usage (completion_tokens, prompt_tokens) and
// timings (predicted_n, prompt_n).
class UsageScanner {
  public:
    struct Usage {
        long long predicted = 0;
        long long prompt = 0;
        bool found = false;
    };

    explicit UsageScanner(std::size_t max_tail = 256 * 1024) : max_tail_(max_tail) {}

    void feed(std::string_view piece);
    Usage finish(bool event_stream) const;

  private:
    std::size_t max_tail_;
    std::string tail_;
    bool truncated_ = false;
};

}  // namespace llama_pool
