// Embedding batches through a running pool of fake workers: a list of inputs is spread over
// the workers and comes back as one reply, in input order, in the shape one server gives.
#include <catch2/catch.hpp>
#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "test/support/pool_fixture.hpp"

using namespace llama_pool::test;
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

json inputs(int n) {
    json list = json::array();
    for (int i = 0; i < n; ++i) {
        list.push_back("document number " + std::to_string(i) + std::string(i % 7, '!'));
    }
    return list;
}

// The fake worker's embedding of `text`: [digest, length, its port].
double digest_of(const std::string& text) {
    std::uint32_t digest = 2166136261u;
    for (const char c : text) {
        digest = (digest ^ static_cast<unsigned char>(c)) * 16777619u;
    }
    return static_cast<double>(digest % 100000);
}

// Checks that every embedding of an OpenAI-shaped reply belongs to its input, in order,
// and returns the ports of the workers that made them.
std::set<int> check_reply(const json& reply, const json& list) {
    REQUIRE(reply["object"] == "list");
    REQUIRE(reply["data"].size() == list.size());
    std::set<int> ports;
    long long tokens = 0;
    for (std::size_t i = 0; i < list.size(); ++i) {
        const auto& item = reply["data"][i];
        const auto text = list[i].get<std::string>();
        CHECK(item["index"] == i);
        CHECK(item["object"] == "embedding");
        CHECK(item["embedding"][0].get<double>() == digest_of(text));
        CHECK(item["embedding"][1].get<double>() == static_cast<double>(text.size()));
        ports.insert(static_cast<int>(item["embedding"][2].get<double>()));
        tokens += static_cast<long long>(text.size());
    }
    CHECK(reply["usage"]["prompt_tokens"] == tokens);
    CHECK(reply["usage"]["total_tokens"] == tokens);
    return ports;
}

}  // namespace

TEST_CASE("an embeddings batch is spread over the workers and merged in input order",
          "[integration][embeddings]") {
    PoolProcess pool(fake_pool_args(2, {"--parallel", "2"}, {"--latency-ms", "5"}));
    REQUIRE(pool.wait_ready(2, 20s));
    auto client = pool.client(30s);
    const auto list = inputs(40);
    for (const char* route : {"/v1/embeddings", "/embeddings"}) {
        const auto r =
            client.Post(route, json{{"model", "m"}, {"input", list}}.dump(), "application/json");
        REQUIRE(r);
        INFO(r->body.substr(0, 500));
        REQUIRE(r->status == 200);
        CHECK(!r->get_header_value("X-Request-Id").empty());
        CHECK(check_reply(json::parse(r->body), list).size() == 2);  // both workers took part
    }
    // A list that fits one worker's slots goes to one worker whole.
    const auto small = inputs(2);
    const auto r = client.Post("/v1/embeddings", json{{"input", small}}.dump(), "application/json");
    REQUIRE(r);
    REQUIRE(r->status == 200);
    CHECK(check_reply(json::parse(r->body), small).size() == 1);

    // The native route with "content": an array of {index, embedding} in input order.
    const auto native =
        client.Post("/embedding", json{{"content", list}}.dump(), "application/json");
    REQUIRE(native);
    REQUIRE(native->status == 200);
    const auto array = json::parse(native->body);
    REQUIRE(array.is_array());
    REQUIRE(array.size() == list.size());
    std::set<int> ports;
    for (std::size_t i = 0; i < list.size(); ++i) {
        CHECK(array[i]["index"] == i);
        CHECK(array[i]["embedding"][0][0].get<double>() == digest_of(list[i].get<std::string>()));
        ports.insert(static_cast<int>(array[i]["embedding"][0][2].get<double>()));
    }
    CHECK(ports.size() == 2);
}

TEST_CASE("a failed slice is retried on another worker, and the client sees one reply",
          "[integration][embeddings]") {
    TempDir dir;
    const auto faults = dir.file("faults");
    std::ofstream(faults) << "";
    PoolProcess pool(
        fake_pool_args(2, {"--parallel", "2"}, {"--latency-ms", "5", "--fault-file", faults}));
    REQUIRE(pool.wait_ready(2, 20s));
    const auto port_of = [&](int i) { return pool.status()["workers"][i]["port"].get<int>(); };
    const int broken = port_of(1);
    std::ofstream(faults) << broken << " fail 503\n";
    auto client = pool.client(30s);
    const auto list = inputs(24);
    const auto r = client.Post("/v1/embeddings", json{{"input", list}}.dump(), "application/json");
    REQUIRE(r);
    INFO(r->body.substr(0, 500));
    REQUIRE(r->status == 200);
    const auto ports = check_reply(json::parse(r->body), list);
    CHECK(ports == std::set<int>{port_of(0)});

    // Every worker failing: one error reply, the workers' own.
    std::ofstream(faults) << port_of(0) << " fail 503\n" << broken << " fail 503\n";
    const auto failed =
        client.Post("/v1/embeddings", json{{"input", list}}.dump(), "application/json");
    REQUIRE(failed);
    CHECK(failed->status == 503);
    CHECK(json::parse(failed->body).contains("error"));
}
