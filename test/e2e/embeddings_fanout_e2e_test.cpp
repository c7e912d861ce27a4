// An embeddings batch spread over REAL llama-server embedding workers: the merged reply has
// the shape and order of one server's, and every vector belongs to its input. Batched and
// one-by-one embeddings differ numerically in llama.cpp (cosine 0.64 to 1.0 measured on the
// random-weight demo model, even on one server), so each vector is matched to the nearest
// one-by-one vector rather than compared for equality.
#include <catch2/catch.hpp>
#include <cmath>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "test/support/pool_fixture.hpp"
#include "test/support/real_worker.hpp"

using namespace llama_pool::test;
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

// Inputs that share little: different words, lengths and scripts.
std::vector<std::string> distinct_inputs(int n) {
    const std::vector<std::string> words = {
        "harbor",  "quantum",  "violin",   "glacier", "tax",      "pancake", "satellite",
        "zebra",   "mortgage", "volcano",  "poetry",  "kernel",   "saffron", "tundra",
        "cricket", "ballet",   "protein",  "cobalt",  "lantern",  "monsoon", "origami",
        "falcon",  "yogurt",   "compiler", "granite", "mandolin", "plasma",  "walrus"};
    std::vector<std::string> out;
    for (int i = 0; i < n; ++i) {
        std::string text;
        for (int k = 0; k < 2 + i % 5; ++k) {
            text += words[static_cast<std::size_t>(i * 7 + k * 3) % words.size()] + " ";
        }
        out.push_back(text + std::to_string(i * 131));
    }
    return out;
}

double cosine(const json& a, const json& b) {
    double dot = 0;
    double na = 0;
    double nb = 0;
    for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
        const auto x = a[i].get<double>();
        const auto y = b[i].get<double>();
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    return na > 0 && nb > 0 ? dot / std::sqrt(na * nb) : 0;
}

// The index of the reference vector nearest to `v` (by cosine).
std::size_t nearest(const json& v, const std::vector<json>& references) {
    std::size_t best = 0;
    double best_cos = -2;
    for (std::size_t i = 0; i < references.size(); ++i) {
        const auto c = cosine(v, references[i]);
        if (c > best_cos) {
            best_cos = c;
            best = i;
        }
    }
    return best;
}

}  // namespace

TEST_CASE("embeddings e2e: a batch over two real workers matches its inputs one by one",
          "[e2e][embeddings]") {
    PoolProcess pool(real_pool_args(
        2, {"--worker-arg", "--embeddings", "--worker-arg", "--pooling", "--worker-arg", "mean"}));
    REQUIRE(pool.wait_ready(2, 180s));
    auto c = pool.client(120s);
    const auto texts = distinct_inputs(16);

    // One by one: each request has one input, so it is relayed whole.
    std::vector<json> references;
    for (const auto& text : texts) {
        const auto r = c.Post("/v1/embeddings", json{{"input", text}}.dump(), "application/json");
        REQUIRE(r);
        REQUIRE(r->status == 200);
        const auto doc = json::parse(r->body);
        REQUIRE(doc["data"].size() == 1);
        references.push_back(doc["data"][0]["embedding"]);
    }
    const auto dims = references.front().size();
    REQUIRE(dims > 0);

    // The batch: more inputs than one worker's 2 slots, so it is spread over both.
    const auto r = c.Post("/v1/embeddings", json{{"input", texts}}.dump(), "application/json");
    REQUIRE(r);
    INFO(r->body.substr(0, 300));
    REQUIRE(r->status == 200);
    const auto batch = json::parse(r->body);
    CHECK(batch["object"] == "list");
    REQUIRE(batch["data"].size() == texts.size());
    CHECK(batch["usage"]["prompt_tokens"].get<long long>() > 0);
    std::size_t matched = 0;
    for (std::size_t i = 0; i < texts.size(); ++i) {
        const auto& item = batch["data"][i];
        CHECK(item["index"] == i);
        REQUIRE(item["embedding"].size() == dims);
        const auto near = nearest(item["embedding"], references);
        INFO("input " << i << " nearest one-by-one vector " << near << " cosine "
                      << cosine(item["embedding"], references[i]));
        CHECK(near == i);
        matched += near == i ? 1 : 0;
    }
    CHECK(matched == texts.size());
    // Both workers served slices: the access log names them together. The line is written
    // just after the reply is sent, so it may come a moment after the client has it.
    const auto both_named = [&] {
        const auto access = pool.log_lines_with("route=/v1/embeddings");
        return access.find("worker=0,1") != std::string::npos ||
               access.find("worker=1,0") != std::string::npos;
    };
    INFO(pool.log_lines_with("route=/v1/embeddings"));
    CHECK(wait_until(both_named, 10s));

    // The native route with "content" gives its own shape, in input order.
    const auto native = c.Post("/embedding", json{{"content", texts}}.dump(), "application/json");
    REQUIRE(native);
    REQUIRE(native->status == 200);
    const auto array = json::parse(native->body);
    REQUIRE(array.is_array());
    REQUIRE(array.size() == texts.size());
    for (std::size_t i = 0; i < texts.size(); ++i) {
        CHECK(array[i]["index"] == i);
        const auto& vector = array[i]["embedding"][0];  // one pooled vector per input
        CHECK(nearest(vector, references) == i);
    }
}
