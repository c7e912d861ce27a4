#pragma once

#include <nlohmann/json.hpp>
#include <string_view>

namespace llama_pool {

// What the pool reads from worker replies that differ between llama-server dialects: current
// llama.cpp, and older forks such as BitNet's (2024) that the pool also runs. Pure.

// Whether one entry of a worker's GET /slots says the slot is taken. Current llama-server
// says `is_processing` (bool); older forks say `state` (0 idle, anything else busy).
enum class SlotActivity { idle, busy, unknown };
SlotActivity slot_activity(const nlohmann::json& slot);
const char* to_string(SlotActivity a);

// Whose fault a worker's 500 is, read from its body. llama-server answers 500 for requests
// it cannot parse (malformed JSON, a field of the wrong type) and older forks also for
// missing fields; those fail the same way on every worker, so a second opinion only doubles
// the work. Anything else may be the worker's own trouble.
enum class Worker500 { request_mistake, maybe_worker_fault };
Worker500 classify_worker_500(std::string_view body);
const char* to_string(Worker500 c);

}  // namespace llama_pool
