// Bugs the libFuzzer targets (test/fuzz) found, one minimal reproducer each. The crashing
// inputs are also kept as seeds in test/fuzz/corpus/<target>/regression-*, so that
// `make fuzz` replays them too.

#include <catch2/catch.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/config.hpp"
#include "common/http_parser.hpp"
#include "proxy/affinity.hpp"
#include "proxy/sse_framer.hpp"
#include "proxy/usage_scanner.hpp"

using namespace llama_pool;

TEST_CASE("a request line at the length limit is not refused when its CR and LF arrive apart",
          "[fuzz][http]") {
    // The server parses again each time bytes arrive. Whole, "GET / HTTP/1.1" (14 bytes) is
    // within a 14-byte limit; it must not get a 414 on the read that ends between CR and LF.
    HeadLimits limits;
    limits.max_line_bytes = 14;
    HttpRequest whole;
    REQUIRE(parse_request_head("GET / HTTP/1.0\r\n\r\n", limits, whole).status ==
            ParseStatus::complete);
    HttpRequest partial;
    const auto r = parse_request_head("GET / HTTP/1.0\r", limits, partial);
    CHECK(r.status == ParseStatus::incomplete);
    CHECK(r.error_status == 0);
}

TEST_CASE("a config number too large for a double is an error, not an exception",
          "[fuzz][config]") {
    // nlohmann reports it as out_of_range (406), not parse_error: it escaped to terminate(),
    // at start and on a SIGHUP reload of a running pool.
    PoolConfig config;
    std::vector<std::string> errors;
    REQUIRE_NOTHROW(apply_config_json(R"({"listen":{"port":1e400}})", "f.json", config, errors));
    REQUIRE(errors.size() == 1);
    CHECK(errors[0].rfind("f.json: ", 0) == 0);
    CHECK(config == PoolConfig{});
}

TEST_CASE("usage counts ignore a non-boolean stop field instead of throwing", "[fuzz][usage]") {
    // json::value("stop", true) throws type_error when "stop" is not a boolean (null, a
    // string): the relay then aborted a response it had already relayed in full.
    for (const std::string stop : {"null", "\"eos\"", "1"}) {
        UsageScanner scanner;
        scanner.feed(R"({"content":"x","tokens_predicted":3,"tokens_evaluated":2,"stop":)" + stop +
                     "}");
        UsageScanner::Usage usage;
        REQUIRE_NOTHROW(usage = scanner.finish(false));
        UsageScanner stream;
        stream.feed("data: {\"tokens_predicted\":3,\"stop\":" + stop + "}\n\n");
        REQUIRE_NOTHROW(stream.finish(true));
    }
}

TEST_CASE("usage counts are never negative, whatever number the worker sends", "[fuzz][usage]") {
    // The counts feed Prometheus counters, whose inc() throws on a negative increment; a
    // float beyond long long's range was converted with undefined behaviour (LLONG_MIN on
    // x86).
    for (const std::string n : {"-1", "1e300", "-1e300", "18446744073709551615", "-0.5"}) {
        UsageScanner scanner;
        scanner.feed(R"({"usage":{"completion_tokens":)" + n + R"(,"prompt_tokens":)" + n + "}}");
        const auto usage = scanner.finish(false);
        CHECK(usage.predicted >= 0);
        CHECK(usage.prompt >= 0);
    }
}

TEST_CASE("config errors stay one line when a key, value or URL holds a line break",
          "[fuzz][config]") {
    // config.hpp promises one line per error, and main prints them as they are: a "\n"
    // escape in a key, a choice or a URL split the message (and could forge the next line).
    PoolConfig config;
    std::vector<std::string> errors;
    apply_config_json(R"({"listen":{"po\nrt":1},"x\ny":1,"proxy":{"balancer":"least\nloaded"}})",
                      "f.json", config, errors);
    CHECK(errors.size() == 3);
    config.upstreams = {"ftp://a\nb:1"};
    validate_config(config, errors);
    for (const auto& e : errors) {
        CHECK(e.find('\n') == std::string::npos);
    }
}

TEST_CASE("an upstream URL whose host cannot be right is refused", "[fuzz][config]") {
    // Accepted before: an empty host from "[]", brackets left over from a typo, blanks.
    for (const std::string url :
         {"http://[]:8081", "http://5:1]:9000", "http://[::1:8081", "dns://a b:8081"}) {
        UpstreamAddress address;
        std::string error;
        CHECK_FALSE(parse_upstream_url(url, address, error));
    }
    UpstreamAddress address;
    std::string error;
    CHECK(parse_upstream_url("http://[::1]:8081", address, error));
    CHECK(address.host == "::1");
}

TEST_CASE("a flag or environment value that is not UTF-8 is taken as given, not thrown on",
          "[fuzz][config]") {
    // apply_text round-tripped every value through json::dump(), which throws type_error 316
    // on bytes that are not UTF-8: `llama-pool --model /models/caf<0xE9>.gguf` (a Latin-1
    // file name) ended in terminate() instead of starting.
    const std::string model = "/models/caf\xe9.gguf";
    const EnvLookup no_env = [](const std::string&) -> std::optional<std::string> {
        return std::nullopt;
    };
    ConfigResult loaded;
    REQUIRE_NOTHROW(loaded = load_config({"--workers", "0", "--model", model}, no_env));
    CHECK(loaded.ok());
    CHECK(loaded.config.model == model);

    const EnvLookup env = [&](const std::string& name) -> std::optional<std::string> {
        return name == "LLAMA_POOL_MODEL" ? std::optional(model) : std::nullopt;
    };
    REQUIRE_NOTHROW(loaded = load_config({"--workers", "0"}, env));
    CHECK(loaded.config.model == model);
}

TEST_CASE("an overlong event after a complete one is not held back beyond the limit",
          "[fuzz][sse]") {
    // fuzz_sse_events: take() cut at the last event boundary even when the bytes after it
    // were already over max_pending, so the relay could hold more of a broken stream than
    // its bound (until the next read).
    SseFramer framer(10);
    framer.feed("data: a\n\ndata: {\"content\"");
    CHECK(framer.take() == "data: a\n\ndata: {\"content\"");
    CHECK(framer.unaligned());
    CHECK(framer.pending().empty());
    SseFramer roomy(64);
    roomy.feed("data: a\n\ndata: {\"content\"");
    CHECK(roomy.take() == "data: a\n\n");
    CHECK(roomy.pending() == "data: {\"content\"");
    CHECK_FALSE(roomy.unaligned());
}

TEST_CASE("an escape is kept when decoding it would join its neighbours into a new one",
          "[fuzz][http]") {
    // fuzz_target_route: "%1%33" keeps "%33" encoded (decoded, "%13" would be a new escape and
    // a second normalization would change the path). The fuzz invariant was too strict; the
    // rule it now checks is this one.
    std::string out;
    REQUIRE(normalize_target("/$%2q%2a)7c/%1%33/c71l", out));
    CHECK(out == "/$%2q%2a)7c/%1%33/c71l");
    std::string again;
    REQUIRE(normalize_target(out, again));
    CHECK(again == out);
}

TEST_CASE("the nesting guard looks past a NUL that ends the parser's document", "[fuzz][json]") {
    // fuzz_affinity: nlohmann's lexer (like llama-server's, the same library) takes a NUL
    // for the end of input, so "9<NUL>...[" is the document 9; the guard counts the '[' after
    // it too, which only errs on the safe side (no affinity rather than a big DOM).
    const std::string body("9\0\0\0p@\"*@/p@\"imag*/[@", 21);
    CHECK(nlohmann::json::accept(body));
    CHECK(json_nesting_at_most(body.substr(0, 1), 0));
    CHECK_FALSE(json_nesting_at_most(body, 0));
}

TEST_CASE("a request target with an encoded control character is refused, not routed",
          "[fuzz][http]") {
    // fuzz_http_request: after normalize_target began refusing encoded control characters,
    // its invariant still said only a target not starting with '/' is refused. "/i%1ell" (a
    // 0x1e) is refused by design: a worker would decode it into its path.
    std::string out;
    CHECK_FALSE(normalize_target("/i%1ell", out));
    CHECK(normalize_target("/i%1gll", out));  // not an escape: kept as it is
    CHECK(out == "/i%1gll");
}
