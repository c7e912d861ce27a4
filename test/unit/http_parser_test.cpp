#include "common/http_parser.hpp"

#include <catch2/catch.hpp>

using namespace llama_pool;

namespace {
ParseResult parse(std::string_view text, HttpRequest& req, HeadLimits limits = {}) {
    return parse_request_head(text, limits, req);
}
}  // namespace

TEST_CASE("a complete request head is parsed with its fields in order", "[http]") {
    HttpRequest req;
    const std::string text =
        "POST /completion?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nX-A: 1\r\n\r\n{}";
    const auto r = parse(text, req);
    REQUIRE(r.status == ParseStatus::complete);
    CHECK(r.consumed == text.size() - 2);
    CHECK(req.method == "POST");
    CHECK(req.path() == "/completion");
    CHECK(req.query() == "x=1");
    CHECK(req.headers.get("content-length") == "2");
    CHECK(req.headers.fields()[2].first == "X-A");
}

TEST_CASE("an incomplete head asks for more bytes", "[http]") {
    HttpRequest req;
    CHECK(parse("GET / HTTP/1.1\r\nHost: a\r\n", req).status == ParseStatus::incomplete);
}

TEST_CASE("bare LF line endings are accepted", "[http]") {
    HttpRequest req;
    CHECK(parse("GET /health HTTP/1.1\nHost: a\n\n", req).status == ParseStatus::complete);
}

TEST_CASE("malformed heads are refused with the right status", "[http]") {
    HttpRequest req;
    SECTION("obsolete line folding") {
        const auto r = parse("GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n", req);
        CHECK(r.status == ParseStatus::error);
        CHECK(r.error_status == 400);
    }
    SECTION("space before the colon") {
        CHECK(parse("GET / HTTP/1.1\r\nHost: a\r\nX-A : 1\r\n\r\n", req).error_status == 400);
    }
    SECTION("control character in a value") {
        CHECK(parse(std::string("GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\n\r\n"), req)
                  .error_status == 400);
    }
    SECTION("unknown version") {
        CHECK(parse("GET / HTTP/2.0\r\n\r\n", req).error_status == 505);
    }
    SECTION("a target in no form the pool serves") {
        CHECK(parse("GET x/ HTTP/1.1\r\nHost: x\r\n\r\n", req).error_status == 400);
    }
    SECTION("head over the limit") {
        HeadLimits limits;
        limits.max_head_bytes = 64;
        const std::string big = "GET / HTTP/1.1\r\nX-A: " + std::string(100, 'a') + "\r\n\r\n";
        CHECK(parse(big, req, limits).error_status == 431);
    }
    SECTION("head over the limit before it is complete") {
        HeadLimits limits;
        limits.max_head_bytes = 64;
        CHECK(parse("GET / HTTP/1.1\r\nX-A: " + std::string(100, 'a'), req, limits).error_status ==
              431);
    }
    SECTION("request line over the limit") {
        HeadLimits limits;
        limits.max_line_bytes = 32;
        CHECK(parse("GET /" + std::string(64, 'a'), req, limits).error_status == 414);
    }
}

TEST_CASE("request framing refuses smuggling shapes", "[http]") {
    auto framing = [](std::string head) {
        HttpRequest req;
        REQUIRE(parse_request_head(head + "Host: h\r\n\r\n", {}, req).status ==
                ParseStatus::complete);
        return request_framing(req);
    };
    CHECK(framing("POST / HTTP/1.1\r\nContent-Length: 5\r\n").framing.length == 5);
    CHECK(framing("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n").error_status ==
          0);
    CHECK(framing("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n").error_status ==
          400);
    CHECK(framing("POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n").error_status == 400);
    CHECK(framing("POST / HTTP/1.1\r\nContent-Length: -1\r\n").error_status == 400);
    CHECK(framing("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n")
              .error_status == 400);
    CHECK(framing("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n").error_status == 501);
    CHECK(framing("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n").framing.kind ==
          BodyFraming::Kind::chunked);
    CHECK(framing("GET / HTTP/1.1\r\n").framing.kind == BodyFraming::Kind::none);
}

TEST_CASE("the chunked decoder works on any split of its input", "[http]") {
    const std::string wire = "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n";
    for (std::size_t split = 0; split <= wire.size(); ++split) {
        ChunkedDecoder d;
        std::string out;
        std::size_t used = 0;
        auto st = d.feed(std::string_view(wire).substr(0, split), used, out);
        REQUIRE(st != ChunkedDecoder::Status::error);
        std::size_t total = used;
        if (st != ChunkedDecoder::Status::done) {
            st = d.feed(std::string_view(wire).substr(split), used, out);
            total += used;
        }
        CHECK(st == ChunkedDecoder::Status::done);
        CHECK(out == "hello world");
        CHECK(total == wire.size());
    }
}

TEST_CASE("the chunked decoder rejects bad sizes and missing CRLF", "[http]") {
    std::string out;
    std::size_t used = 0;
    ChunkedDecoder a;
    CHECK(a.feed("zz\r\n", used, out) == ChunkedDecoder::Status::error);
    ChunkedDecoder b;
    CHECK(b.feed("2\r\nabXY", used, out) == ChunkedDecoder::Status::error);
    ChunkedDecoder c;
    CHECK(c.feed("ffffffffffffffffff\r\n", used, out) == ChunkedDecoder::Status::error);
}

TEST_CASE("response heads and their framing", "[http]") {
    HttpResponseHead head;
    auto r = parse_response_head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", {}, head);
    REQUIRE(r.status == ParseStatus::complete);
    CHECK(head.status == 200);
    CHECK(response_framing(head, false).framing.kind == BodyFraming::Kind::chunked);
    CHECK(response_framing(head, true).framing.kind == BodyFraming::Kind::none);
    HttpResponseHead bad;
    CHECK(parse_response_head("HTTP/1.1 2x0 Nope\r\n\r\n", {}, bad).status == ParseStatus::error);
    HttpResponseHead close_delimited;
    parse_response_head("HTTP/1.0 200 OK\r\n\r\n", {}, close_delimited);
    CHECK(response_framing(close_delimited, false).framing.kind == BodyFraming::Kind::until_close);
}

TEST_CASE("targets are normalized", "[http]") {
    std::string out;
    REQUIRE(normalize_target("//completion", out));
    CHECK(out == "/completion");
    REQUIRE(normalize_target("/v1//chat/./completions?a=b//c", out));
    CHECK(out == "/v1/chat/completions?a=b//c");
    REQUIRE(normalize_target("/../../etc/passwd", out));
    CHECK(out == "/etc/passwd");
    REQUIRE(normalize_target("/", out));
    CHECK(out == "/");
    CHECK_FALSE(normalize_target("completion", out));
}

TEST_CASE("encoded dots and letters are decoded before dot segments are resolved", "[http]") {
    // The worker (cpp-httplib) decodes the path before routing it; so must the pool, or
    // "/%2e%2e/pool/status" and "/%70ool/status" would slip past the pool's own routes.
    std::string out;
    REQUIRE(normalize_target("/%2e%2e/pool/status", out));
    CHECK(out == "/pool/status");
    REQUIRE(normalize_target("/v1/%2E%2e/%70ool/restart?x=%2e%2e", out));
    CHECK(out == "/pool/restart?x=%2e%2e");
    REQUIRE(normalize_target("/.%2e/metrics", out));
    CHECK(out == "/metrics");
    // Reserved characters stay encoded: "%2F" is not a segment boundary.
    REQUIRE(normalize_target("/pool%2Fstatus/%252e%2e", out));
    CHECK(out == "/pool%2Fstatus/%252e.");
    REQUIRE(normalize_target("/a%zz/%4", out));
    CHECK(out == "/a%zz/%4");
    // Decoding never forms a new escape, so normalizing twice changes nothing.
    REQUIRE(normalize_target("/%%32e/%2%32", out));
    CHECK(out == "/%%32e/%2%32");
    // No API path holds an encoded control character; a worker would decode it into one.
    CHECK_FALSE(normalize_target("/completion%00", out));
    CHECK_FALSE(normalize_target("/%0d%0aX-Injected:1", out));
    CHECK_FALSE(normalize_target("/%7F", out));
    REQUIRE(normalize_target("/completion?q=%00", out));  // the query is the worker's business
    CHECK(out == "/completion?q=%00");
}

TEST_CASE("hop-by-hop headers include those named in Connection", "[http]") {
    Headers h;
    h.add("Connection", "close, X-Secret");
    CHECK(is_hop_by_hop("keep-alive", h));
    CHECK(is_hop_by_hop("x-secret", h));
    CHECK_FALSE(is_hop_by_hop("Content-Type", h));
}
