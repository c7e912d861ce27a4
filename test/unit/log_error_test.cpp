#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <set>

#include "common/error_body.hpp"
#include "common/log.hpp"
#include "proxy/request_id.hpp"

using namespace llama_pool;

TEST_CASE("text log lines are key=value with quoting where needed", "[log]") {
    const auto line = Logger::format_line(LogFormat::text, "T", LogLevel::info, "proxy", "request",
                                          {{"worker", "0"}, {"status", 200}, {"msg", "a b"}});
    CHECK(line == R"(ts=T level=info component=proxy event=request msg="a b" status=200 worker=0)");
}

TEST_CASE("JSON log lines are one valid object with typed values", "[log]") {
    const auto line = Logger::format_line(LogFormat::json, "T", LogLevel::warn, "supervisor",
                                          "worker_failed", {{"worker", "1"}, {"code", 3}});
    const auto j = nlohmann::json::parse(line);
    CHECK(j["level"] == "warn");
    CHECK(j["event"] == "worker_failed");
    CHECK(j["code"] == 3);
    CHECK(line.find('\n') == std::string::npos);
}

TEST_CASE("a value with a newline cannot forge a second log line", "[log]") {
    const auto line = Logger::format_line(LogFormat::text, "T", LogLevel::info, "c", "e",
                                          {{"x", "a\nts=forged level=error"}});
    CHECK(line.find('\n') == std::string::npos);
}

TEST_CASE("pool errors have llama-server's shape plus a source marker", "[errors]") {
    const auto j = nlohmann::json::parse(make_error_body(503, "no worker"));
    CHECK(j["error"]["code"] == 503);
    CHECK(j["error"]["type"] == "unavailable_error");
    CHECK(j["error"]["message"] == "no worker");
    CHECK(j["error"]["source"] == "llama-pool");
    CHECK(nlohmann::json::parse(make_error_body(404, "x"))["error"]["type"] == "not_found_error");
    CHECK(nlohmann::json::parse(make_error_body(401, "x"))["error"]["type"] ==
          "authentication_error");
}

TEST_CASE("request ids are kept when safe and replaced otherwise", "[request-id]") {
    RequestIds ids;
    CHECK(ids.for_request(std::string_view("abc-123_x.y:z")) == "abc-123_x.y:z");
    CHECK(ids.for_request(std::string_view("evil\r\nSet-Cookie: a")) != "evil\r\nSet-Cookie: a");
    CHECK(ids.for_request(std::string_view(std::string(200, 'a'))).size() == 16);
    CHECK(ids.for_request(std::nullopt).size() == 16);
    CHECK(is_acceptable_request_id(ids.next()));
}

TEST_CASE("fresh request ids never repeat and depend on the random start", "[request-id]") {
    RequestIds ids(42);
    std::set<std::string> seen;
    for (int i = 0; i < 200000; ++i) {
        REQUIRE(seen.insert(ids.next()).second);
    }
    // Consecutive ids do not look consecutive (they are mixed), and another start gives
    // other ids.
    RequestIds same(42);
    RequestIds other(43);
    const auto a = same.next();
    CHECK(seen.count(a) == 1);  // the same start gives the same ids
    CHECK(other.next() != a);
    CHECK(same.next().substr(0, 8) != a.substr(0, 8));
}
