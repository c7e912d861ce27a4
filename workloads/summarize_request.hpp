#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "workloads/chunker.hpp"

namespace llama_pool {

// What the configuration sets for requests that do not say: the summarize.* settings.
struct SummarizeDefaults {
    std::size_t max_chunk_chars = 2048;
    std::size_t overlap = 200;
    int levels = 6;
    std::size_t max_text_chars = 2'000'000;
    std::string map_prompt;
    std::string reduce_prompt;
};

// A validated summarization request.
struct SummarizeRequest {
    std::string text;
    std::string topic;
    ChunkerOptions chunking;
    int levels = 6;             // at most this many rounds of summaries of summaries
    std::string map_prompt;     // for chunks of the text; has {text}, may have {topic}
    std::string reduce_prompt;  // for chunks of joined summaries
    // Sampling fields passed through to every completion (temperature, seed, stop...).
    nlohmann::json sampling = nlohmann::json::object();
    // Tokens per completion when the client fixes it (n_predict or max_tokens); otherwise
    // about 30% of the chunk's length, as the n8n node does.
    std::optional<int> n_predict;
};

// The prompts used when neither the configuration nor the request gives one.
std::string default_map_prompt();
std::string default_reduce_prompt();

// Validates a /v1/summarize (or /v1/jobs, with `type`) body. On failure returns false with a
// message naming the field, its problem and what is accepted, for a 400.
bool parse_summarize_request(const nlohmann::json& body, const SummarizeDefaults& defaults,
                             bool job, SummarizeRequest& out, std::string& error);

// A validated request as a job saves it (everything resolved: defaults, prompts) and back,
// so a resumed job runs as it was submitted even if the configuration changed. Returns false
// with `error` naming what is missing or wrong.
nlohmann::json request_to_json(const SummarizeRequest& request);
bool request_from_json(const nlohmann::json& saved, SummarizeRequest& out, std::string& error);

// `prompt` with {text} and {topic} filled in; an empty topic reads "its main points".
std::string render_prompt(const std::string& prompt, const std::string& text,
                          const std::string& topic);

// Tokens to ask for when summarizing `chars` characters: the node's 30%, at 4 characters a
// token, with a floor so a short chunk still gets a sentence.
int summary_tokens_for(std::size_t chars);

}  // namespace llama_pool
