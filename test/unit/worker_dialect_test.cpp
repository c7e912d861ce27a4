#include "proxy/worker_dialect.hpp"

#include <catch2/catch.hpp>

using namespace llama_pool;
using nlohmann::json;

TEST_CASE("slot activity is read in both llama-server dialects", "[dialect]") {
    CHECK(slot_activity(json{{"id", 0}, {"is_processing", false}}) == SlotActivity::idle);
    CHECK(slot_activity(json{{"id", 0}, {"is_processing", true}}) == SlotActivity::busy);
    // BitNet's 2024 fork: "state", 0 idle, anything else busy.
    CHECK(slot_activity(json{{"id", 0}, {"state", 0}}) == SlotActivity::idle);
    CHECK(slot_activity(json{{"id", 0}, {"state", 1}}) == SlotActivity::busy);
    CHECK(slot_activity(json{{"id", 0}, {"state", 2}}) == SlotActivity::busy);
    CHECK(slot_activity(json{{"id", 0}}) == SlotActivity::unknown);
    CHECK(slot_activity(json{{"id", 0}, {"state", "idle"}}) == SlotActivity::unknown);
    CHECK(slot_activity(json::array()) == SlotActivity::unknown);
}

TEST_CASE("a worker 500 built from the request alone is the request's mistake", "[dialect]") {
    // Bodies as BitNet's fork sends them for a missing or mistyped prompt, and for bad JSON.
    CHECK(classify_worker_500(R"({"error":{"code":500,"message":"\"prompt\" must be a string, )"
                              R"(an array of token ids or an array of prompts",)"
                              R"("type":"server_error"}})") == Worker500::request_mistake);
    CHECK(classify_worker_500(R"({"error":{"code":500,"message":"[json.exception.out_of_range.)"
                              R"(403] key 'messages' not found","type":"server_error"}})") ==
          Worker500::request_mistake);
    CHECK(classify_worker_500(
              R"({"error":{"code":500,"message":"[json.exception.parse_error.101] parse error",)"
              R"("type":"server_error"}})") == Worker500::request_mistake);
    // Anything else may be the worker's own trouble.
    CHECK(classify_worker_500(R"({"error":{"code":500,"message":"failed to find free space in )"
                              R"(the KV cache","type":"server_error"}})") ==
          Worker500::maybe_worker_fault);
    CHECK(classify_worker_500("Internal Server Error") == Worker500::maybe_worker_fault);
    CHECK(classify_worker_500("") == Worker500::maybe_worker_fault);
    CHECK(classify_worker_500(R"({"error":"x"})") == Worker500::maybe_worker_fault);
}
