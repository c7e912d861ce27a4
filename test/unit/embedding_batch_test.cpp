// The decisions of an embeddings batch spread over workers: which bodies are batches, how
// they are cut, and how the slices' replies are merged (order, indices, usage, errors).
#include "proxy/embedding_batch.hpp"

#include <algorithm>
#include <catch2/catch.hpp>
#include <numeric>

using namespace llama_pool;
using nlohmann::json;

namespace {

json strings(std::size_t n) {
    json list = json::array();
    for (std::size_t i = 0; i < n; ++i) {
        list.push_back("text " + std::to_string(i));
    }
    return list;
}

// What a worker answers for inputs [begin, end) in the OpenAI shape; each embedding says
// which input it is for. `reversed`: data listed last first, as a server may.
std::string oai_reply(EmbeddingSlice s, bool reversed = false, long long tokens_each = 3) {
    json data = json::array();
    for (std::size_t k = 0; k < s.size(); ++k) {
        data.push_back({{"embedding", {static_cast<double>(s.begin + k), 0.5}},
                        {"index", k},
                        {"object", "embedding"}});
    }
    if (reversed) {
        std::reverse(data.begin(), data.end());
    }
    const auto n = static_cast<long long>(s.size());
    // Fields in llama-server's order, which the merge keeps.
    return nlohmann::ordered_json{
        {"model", "m.gguf"},
        {"object", "list"},
        {"usage", {{"prompt_tokens", n * tokens_each}, {"total_tokens", n * tokens_each}}},
        {"data", data}}
        .dump();
}

std::string native_reply(EmbeddingSlice s) {
    json out = json::array();
    for (std::size_t k = 0; k < s.size(); ++k) {
        out.push_back({{"index", k}, {"embedding", {{static_cast<double>(s.begin + k)}}}});
    }
    return out.dump();
}

}  // namespace

TEST_CASE("embedding batches are lists of several prompts", "[embeddings]") {
    const auto batch = find_embedding_batch({{"input", strings(3)}});
    REQUIRE(batch);
    CHECK(batch->field == "input");
    CHECK(batch->count == 3);
    const auto native = find_embedding_batch({{"content", strings(2)}});
    REQUIRE(native);
    CHECK(native->field == "content");
    // Token-id prompts are prompts too.
    CHECK(find_embedding_batch({{"input", {{1, 2}, {3, 4}}}}));
    // One prompt, however written, is not a batch.
    CHECK_FALSE(find_embedding_batch({{"input", "one"}}));
    CHECK_FALSE(find_embedding_batch({{"input", strings(1)}}));
    CHECK_FALSE(find_embedding_batch({{"input", {1, 2, 3}}}));  // one prompt of token ids
    CHECK_FALSE(find_embedding_batch({{"input", {"a", 2}}}));   // the worker says what is wrong
    CHECK_FALSE(find_embedding_batch({{"model", "x"}}));
    CHECK_FALSE(find_embedding_batch(json::array({"a", "b"})));
    // "input" wins over "content", as in llama-server.
    CHECK(find_embedding_batch({{"input", "one"}, {"content", strings(4)}}) == std::nullopt);
}

TEST_CASE("a batch is cut in proportion to the workers' slots, small ones stay whole",
          "[embeddings]") {
    const auto sizes = [](const std::vector<EmbeddingSlice>& slices) {
        std::vector<std::size_t> out;
        std::size_t next = 0;
        for (const auto& s : slices) {
            CHECK(s.begin == next);  // contiguous, in order
            CHECK(s.size() > 0);
            next = s.end;
            out.push_back(s.size());
        }
        return out;
    };
    using V = std::vector<std::size_t>;
    CHECK(sizes(plan_embedding_slices(256, {4, 4})) == V{128, 128});
    CHECK(sizes(plan_embedding_slices(257, {4, 4})) == V{129, 128});
    CHECK(sizes(plan_embedding_slices(4, {4, 4})) == V{4});  // fits one worker
    CHECK(sizes(plan_embedding_slices(6, {4, 4})) == V{3, 3});
    CHECK(sizes(plan_embedding_slices(6, {4, 4, 4})) == V{3, 3});  // two workers take it all
    CHECK(sizes(plan_embedding_slices(100, {8})) == V{100});       // one worker ready
    CHECK(sizes(plan_embedding_slices(100, {})) == V{100});
    CHECK(sizes(plan_embedding_slices(100, {0, 4})) == V{100});    // a worker with no slot
    CHECK(sizes(plan_embedding_slices(90, {2, 4})) == V{60, 30});  // the larger worker first
    CHECK(sizes(plan_embedding_slices(3, {1, 1, 1, 1})) == V{1, 1, 1});
    for (std::size_t n = 2; n < 40; ++n) {
        const auto s = sizes(plan_embedding_slices(n, {1, 3, 2}));
        CHECK(std::accumulate(s.begin(), s.end(), std::size_t{0}) == n);
    }
}

TEST_CASE("a slice body keeps every other field and its part of the list", "[embeddings]") {
    const json body = {{"model", "e"}, {"input", strings(5)}, {"encoding_format", "float"}};
    const auto batch = *find_embedding_batch(body);
    const auto slice = json::parse(embedding_slice_body(body, batch, {2, 4}));
    CHECK(slice["model"] == "e");
    CHECK(slice["encoding_format"] == "float");
    CHECK(slice["input"] == json::array({"text 2", "text 3"}));
}

TEST_CASE("replies merge in input order with indices and usage of one reply", "[embeddings]") {
    const std::vector<EmbeddingSlice> slices = {{0, 3}, {3, 5}, {5, 9}};
    const auto merged =
        merge_embedding_replies(slices, {{200, oai_reply(slices[0])},
                                         {200, oai_reply(slices[1], true)},  // listed out of order
                                         {200, oai_reply(slices[2], false, 5)}});
    REQUIRE(merged.error == EmbeddingMergeError::none);
    const auto doc = json::parse(merged.body);
    REQUIRE(doc["data"].size() == 9);
    for (std::size_t i = 0; i < 9; ++i) {
        CHECK(doc["data"][i]["index"] == i);
        CHECK(doc["data"][i]["embedding"][0] == static_cast<double>(i));
        CHECK(doc["data"][i]["object"] == "embedding");
    }
    CHECK(doc["usage"]["prompt_tokens"] == 3 * 3 + 2 * 3 + 4 * 5);
    CHECK(doc["usage"]["total_tokens"] == 3 * 3 + 2 * 3 + 4 * 5);
    CHECK(doc["model"] == "m.gguf");
    CHECK(doc["object"] == "list");
    // The fields in the order the worker wrote them.
    CHECK(merged.body.find("\"model\"") < merged.body.find("\"data\""));

    const auto native = merge_embedding_replies(
        {{0, 2}, {2, 3}}, {{200, native_reply({0, 2})}, {200, native_reply({2, 3})}});
    REQUIRE(native.error == EmbeddingMergeError::none);
    const auto array = json::parse(native.body);
    REQUIRE(array.size() == 3);
    for (std::size_t i = 0; i < 3; ++i) {
        CHECK(array[i]["index"] == i);
        CHECK(array[i]["embedding"][0][0] == static_cast<double>(i));
    }
}

TEST_CASE("a failed or malformed slice fails the merge, naming the slice", "[embeddings]") {
    const std::vector<EmbeddingSlice> slices = {{0, 2}, {2, 4}, {4, 6}};
    const auto ok = [&](std::size_t i) { return EmbeddingSliceReply{200, oai_reply(slices[i])}; };
    const EmbeddingSliceReply busy{503, R"({"error":{"code":503,"message":"busy"}})"};

    // The first failed slice in input order; one cancelled for it (no reply) does not hide it.
    auto m = merge_embedding_replies(slices, {{0, ""}, busy, {500, "{}"}});
    CHECK(m.error == EmbeddingMergeError::slice_failed);
    CHECK(m.slice == 1);

    m = merge_embedding_replies(slices, {ok(0), ok(1), {0, ""}});
    CHECK(m.error == EmbeddingMergeError::no_reply);
    CHECK(m.slice == 2);
    CHECK(m.message.find("inputs 4 to 5") != std::string::npos);

    m = merge_embedding_replies(slices, {ok(0), {200, "not json"}, ok(2)});
    CHECK(m.error == EmbeddingMergeError::malformed);
    CHECK(m.slice == 1);

    m = merge_embedding_replies(slices, {ok(0), {200, oai_reply({2, 3})}, ok(2)});
    CHECK(m.error == EmbeddingMergeError::count_mismatch);

    auto repeated = json::parse(oai_reply(slices[1]));
    repeated["data"][1]["index"] = 0;
    m = merge_embedding_replies(slices, {ok(0), {200, repeated.dump()}, ok(2)});
    CHECK(m.error == EmbeddingMergeError::index_mismatch);
    repeated["data"][1]["index"] = 7;
    m = merge_embedding_replies(slices, {ok(0), {200, repeated.dump()}, ok(2)});
    CHECK(m.error == EmbeddingMergeError::index_mismatch);

    m = merge_embedding_replies(slices, {ok(0), {200, native_reply(slices[1])}, ok(2)});
    CHECK(m.error == EmbeddingMergeError::shape_mismatch);
    CHECK(m.slice == 1);

    m = merge_embedding_replies(slices, {ok(0), ok(1)});
    CHECK(m.error == EmbeddingMergeError::no_reply);
    CHECK(to_string(EmbeddingMergeError::count_mismatch) == "count_mismatch");
}
