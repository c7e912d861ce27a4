#include "proxy/usage_scanner.hpp"

#include <catch2/catch.hpp>
#include <string>

using namespace llama_pool;

namespace {

UsageScanner::Usage scan(const std::string& reply, bool stream, std::size_t piece = 0) {
    UsageScanner scanner;
    if (piece == 0) {
        scanner.feed(reply);
    } else {
        for (std::size_t at = 0; at < reply.size(); at += piece) {
            scanner.feed(std::string_view(reply).substr(at, piece));
        }
    }
    return scanner.finish(stream);
}

}  // namespace

TEST_CASE("usage counts come from each reply shape llama-server sends", "[usage]") {
    auto u =
        scan(R"({"content":"x","tokens_predicted":5,"tokens_evaluated":3,"stop":true})", false);
    CHECK(u.found);
    CHECK(u.predicted == 5);
    CHECK(u.prompt == 3);

    u = scan(R"({"choices":[],"usage":{"completion_tokens":7,"prompt_tokens":2,"total_tokens":9}})",
             false);
    CHECK(u.found);
    CHECK(u.predicted == 7);
    CHECK(u.prompt == 2);

    u = scan(R"({"timings":{"predicted_n":4,"prompt_n":6}})", false);
    CHECK(u.found);
    CHECK(u.predicted == 4);
    CHECK(u.prompt == 6);

    // A stream: the last event with counts; a partial event (stop false) does not count.
    u = scan(
        "data: {\"content\":\"a\",\"stop\":false,\"tokens_predicted\":1}\n\n"
        "data: {\"content\":\"\",\"stop\":true,\"tokens_predicted\":8,\"tokens_evaluated\":2}\n\n",
        true);
    CHECK(u.predicted == 8);
    CHECK(u.prompt == 2);
    u = scan(
        "data: {\"choices\":[{\"delta\":{}}],\"usage\":{\"completion_tokens\":3,"
        "\"prompt_tokens\":1}}\n\ndata: [DONE]\n\n",
        true);
    CHECK(u.predicted == 3);
    CHECK(u.prompt == 1);
}

TEST_CASE("usage counts read only the top-level object, and a repeated key's last value",
          "[usage]") {
    // Fields inside nested objects or arrays are someone else's.
    CHECK_FALSE(scan(R"({"choices":[{"usage":{"completion_tokens":9}}]})", false).found);
    CHECK_FALSE(scan(R"([{"tokens_predicted":9}])", false).found);
    // The last "usage" is not an object, so the native fields count.
    auto u = scan(R"({"usage":{"completion_tokens":1},"usage":3,"tokens_predicted":7})", false);
    CHECK(u.predicted == 7);
    // The last "stop" is false: not a final event, and the timings count instead.
    u = scan(R"({"tokens_predicted":7,"stop":true,"stop":false,"timings":{"predicted_n":2}})",
             false);
    CHECK(u.predicted == 2);
    // A "stop" that is no boolean does not hold the counts back.
    u = scan(R"({"tokens_predicted":7,"stop":false,"stop":{"x":false}})", false);
    CHECK(u.predicted == 7);
    // Deeper objects inside usage do not count; the direct field after them does.
    u = scan(R"({"usage":{"x":{"completion_tokens":5},"completion_tokens":6}})", false);
    CHECK(u.predicted == 6);
    CHECK_FALSE(scan(R"({"tokens_predicted":7)", false).found);
    CHECK_FALSE(scan(R"({"tokens_predicted":7} trailing)", false).found);
}

TEST_CASE("a stream far longer than the kept tail still yields its final counts", "[usage]") {
    std::string stream;
    for (int i = 0; i < 20000; ++i) {
        stream += "data: {\"content\":\"token\",\"stop\":false,\"tokens_predicted\":" +
                  std::to_string(i) + "}\n\n";
    }
    stream +=
        "data: {\"content\":\"\",\"stop\":true,\"tokens_predicted\":20000,"
        "\"tokens_evaluated\":4}\n\n";
    REQUIRE(stream.size() > 1024 * 1024);
    for (const std::size_t piece : {std::size_t{0}, std::size_t{61}, std::size_t{4096}}) {
        const auto u = scan(stream, true, piece);
        CHECK(u.found);
        CHECK(u.predicted == 20000);
        CHECK(u.prompt == 4);
    }
    // A JSON body longer than the tail cannot be parsed, so it counts nothing.
    CHECK_FALSE(
        scan("{\"x\":\"" + std::string(300 * 1024, 'a') + "\",\"tokens_predicted\":1}", false, 1000)
            .found);
}

TEST_CASE("a reply without count fields reads as none, and an escaped key still counts",
          "[usage]") {
    CHECK_FALSE(scan(R"({"tokens":[1,2,3,4]})", false).found);
    CHECK_FALSE(scan("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n", true).found);
    // "usage" with its letters escaped: the same key to a JSON parser.
    const auto u = scan(R"({"\u0075sage":{"completion_tokens":7,"prompt_tokens":2}})", false);
    CHECK(u.found);
    CHECK(u.predicted == 7);
    CHECK(u.prompt == 2);
}
