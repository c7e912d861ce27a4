// Summaries against workers whose slot context is smaller than a chunk: BitNet's fork cuts
// such a prompt silently (200, "truncated": true), current llama-server refuses it (400).
#include <catch2/catch.hpp>
#include <mutex>

#include "test/support/fakes.hpp"
#include "workloads/summarizer.hpp"
#include "workloads/workload_routes.hpp"

using namespace llama_pool;
using nlohmann::json;

namespace {

std::string numbered_text(int sentences) {
    std::string text;
    for (int i = 1; i <= sentences; ++i) {
        text += "Sentence [s" + std::to_string(i) + "] tells of rivers and of hills. ";
    }
    return text;
}

SummarizeRequest request_for(std::string text, std::size_t max_chars) {
    SummarizeRequest r;
    r.text = std::move(text);
    r.chunking = {max_chars, 0};
    r.levels = 4;
    r.n_predict = 8;
    r.map_prompt = default_map_prompt();
    r.reduce_prompt = default_reduce_prompt();
    return r;
}

// The tags ("[s12]") of a prompt, the way a fake model "summarizes".
std::string tags_of(const std::string& prompt) {
    std::string out;
    for (auto at = prompt.find("[s"); at != std::string::npos; at = prompt.find("[s", at + 1)) {
        const auto end = prompt.find(']', at);
        out += prompt.substr(at, end + 1 - at) + " ";
    }
    return out;
}

}  // namespace

TEST_CASE("a reply cut to the slot context is split and redone, never kept", "[summarize]") {
    // Like BitNet's fork: a prompt over 900 bytes is cut, and the reply says so.
    std::mutex mutex;
    std::vector<std::size_t> prompt_sizes;
    const CompletionCall call = [&](const std::string& body, const std::string&,
                                    const std::set<std::string>&) {
        const auto prompt = json::parse(body)["prompt"].get<std::string>();
        std::lock_guard lock(mutex);
        prompt_sizes.push_back(prompt.size());
        if (prompt.size() > 900) {
            return CompletionReply{200, json{{"content", "CUT"}, {"truncated", true}}.dump(), "w0"};
        }
        return CompletionReply{200, json{{"content", tags_of(prompt)}, {"truncated", false}}.dump(),
                               "w0"};
    };
    test::FakeTime time;
    const Summarizer summarizer(
        call, [] { return 1; }, 3, time);
    CancelToken cancel;
    const auto result = summarizer.run(request_for(numbered_text(40), 2400), "req", cancel);
    REQUIRE(result.ok);
    CHECK(result.splits > 0);
    CHECK(result.summary.find("CUT") == std::string::npos);
    // Every sentence reached a summary that was not cut.
    for (int i = 1; i <= 40; ++i) {
        CHECK(result.summary.find("[s" + std::to_string(i) + "]") != std::string::npos);
    }
}

TEST_CASE("a prompt counted over the slot context is split before it is sent", "[summarize]") {
    std::mutex mutex;
    std::vector<std::string> sent;
    const CompletionCall call = [&](const std::string& body, const std::string&,
                                    const std::set<std::string>&) {
        const auto prompt = json::parse(body)["prompt"].get<std::string>();
        std::lock_guard lock(mutex);
        sent.push_back(prompt);
        return CompletionReply{200, json{{"content", tags_of(prompt)}}.dump(), "w0"};
    };
    // Four bytes a token; 300 tokens a slot, 8 of them for the summary.
    ContextProbe probe;
    int props_calls = 0;
    probe.slot_context = [&] {
        ++props_calls;
        return 300;
    };
    probe.count_tokens = [](const std::string& prompt) -> std::optional<int> {
        return static_cast<int>(prompt.size() / 4);
    };
    test::FakeTime time;
    const Summarizer summarizer(
        call, [] { return 2; }, 3, time, probe);
    CancelToken cancel;
    const auto result = summarizer.run(request_for(numbered_text(60), 4000), "req", cancel);
    REQUIRE(result.ok);
    CHECK(result.splits > 0);
    CHECK(props_calls == 1);
    for (const auto& prompt : sent) {
        CHECK(static_cast<int>(prompt.size() / 4) + 8 <= 300);
    }
}

TEST_CASE("current llama-server's too-long 400 is split too", "[summarize]") {
    const CompletionCall call = [&](const std::string& body, const std::string&,
                                    const std::set<std::string>&) {
        const auto prompt = json::parse(body)["prompt"].get<std::string>();
        if (prompt.size() > 900) {
            return CompletionReply{
                400,
                R"({"error":{"code":400,"message":"the request exceeds the )"
                R"(available context size","type":"exceed_context_size_error"}})",
                "w0"};
        }
        return CompletionReply{200, json{{"content", tags_of(prompt)}}.dump(), "w0"};
    };
    test::FakeTime time;
    const Summarizer summarizer(
        call, [] { return 1; }, 3, time);
    CancelToken cancel;
    const auto result = summarizer.run(request_for(numbered_text(30), 2400), "req", cancel);
    REQUIRE(result.ok);
    CHECK(result.splits > 0);
}

TEST_CASE("a piece that fits no slot fails the summary and says why", "[summarize]") {
    const CompletionCall call = [&](const std::string&, const std::string&,
                                    const std::set<std::string>&) {
        return CompletionReply{200, json{{"content", "CUT"}, {"truncated", true}}.dump(), "w0"};
    };
    test::FakeTime time;
    const Summarizer summarizer(
        call, [] { return 1; }, 3, time);
    CancelToken cancel;
    const auto result = summarizer.run(request_for(numbered_text(30), 2400), "req", cancel);
    CHECK_FALSE(result.ok);
    CHECK(result.status == 502);
    CHECK(result.error.find("does not fit") != std::string::npos);
    CHECK(result.summary.empty());
}

TEST_CASE("replies say whether the prompt fit the slot, in both dialects", "[summarize]") {
    CHECK(context_verdict(200, R"({"content":"x","truncated":true})") == ContextVerdict::too_long);
    CHECK(context_verdict(200, R"({"content":"x","truncated":false})") == ContextVerdict::fits);
    CHECK(context_verdict(200, R"({"content":"x"})") == ContextVerdict::fits);
    CHECK(context_verdict(400, R"({"error":{"code":400,"type":"exceed_context_size_error"}})") ==
          ContextVerdict::too_long);
    CHECK(context_verdict(400, R"({"error":{"code":400,"type":"invalid_request_error"}})") ==
          ContextVerdict::fits);
    CHECK(context_verdict(500, R"({"truncated":true})") == ContextVerdict::fits);
    CHECK(context_verdict(200, "not json") == ContextVerdict::fits);
}

TEST_CASE("the slot context is read from /props in both dialects", "[summarize]") {
    CHECK(slot_context_from_props(
              R"({"default_generation_settings":{"n_ctx":256},"total_slots":2})") == 256);
    CHECK(slot_context_from_props(R"({"n_ctx":1024})") == 1024);
    CHECK(slot_context_from_props(R"({"total_slots":2})") == 0);
    CHECK(slot_context_from_props("oops") == 0);
}
