#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

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
    CHECK(request_id_for(std::string_view("abc-123_x.y:z")) == "abc-123_x.y:z");
    CHECK(request_id_for(std::string_view("evil\r\nSet-Cookie: a")) != "evil\r\nSet-Cookie: a");
    CHECK(request_id_for(std::string_view(std::string(200, 'a'))).size() == 16);
    CHECK(request_id_for(std::nullopt).size() == 16);
    CHECK(new_request_id() != new_request_id());
}
