// RFC 9112 (and RFC 9110's request-side rules) held against the pure parser, one test per
// row of the table in docs/RELIABILITY.md ("HTTP conformance"). Every input is parsed the
// way the server reads it: again each time bytes arrive, here for every split into two
// reads, so no rule holds only when a head or a chunked body arrives in one piece.

#include <sys/socket.h>

#include <catch2/catch.hpp>
#include <string>
#include <string_view>

#include "common/http_client.hpp"
#include "common/http_parser.hpp"
#include "common/socket.hpp"

using namespace llama_pool;
using namespace std::string_view_literals;

namespace {

// The request head of `text` (which holds exactly one head, maybe followed by a body), read
// for every split into two reads: before the blank line ends the head nothing is decided;
// from there on the answer is that of the whole.
ParseResult head(const std::string& text, HttpRequest& out) {
    out = HttpRequest{};  // the parser adds to what it is given, as the server resets it too
    const auto whole = parse_request_head(text, {}, out);
    const auto end = text.find("\r\n\r\n");
    REQUIRE(end != std::string::npos);
    const auto head_end = whole.status == ParseStatus::complete ? whole.consumed : end + 4;
    for (std::size_t split = 0; split <= text.size(); ++split) {
        HttpRequest partial;
        const auto r = parse_request_head(std::string_view(text).substr(0, split), {}, partial);
        INFO("split at " << split);
        if (split < head_end) {
            REQUIRE(r.status == ParseStatus::incomplete);
            continue;
        }
        REQUIRE(r.status == whole.status);
        REQUIRE(r.error_status == whole.error_status);
        REQUIRE(r.consumed == whole.consumed);
        REQUIRE(partial.target == out.target);
        REQUIRE(partial.headers.fields() == out.headers.fields());
    }
    return whole;
}

int status_of(const std::string& text) {
    HttpRequest req;
    const auto r = head(text, req);
    return r.status == ParseStatus::complete ? 200 : r.error_status;
}

int framing_status(const std::string& text) {
    HttpRequest req;
    REQUIRE(head(text, req).status == ParseStatus::complete);
    const auto f = request_framing(req);
    return f.error_status == 0 ? 200 : f.error_status;
}

struct Decoded {
    ChunkedDecoder::Status status = ChunkedDecoder::Status::need_more;
    std::string body;
};

// A chunked body fed in two pieces, for every split; every split must decode the same.
Decoded chunked(const std::string& wire) {
    Decoded first;
    for (std::size_t split = 0; split <= wire.size(); ++split) {
        ChunkedDecoder d;
        Decoded got;
        std::size_t used = 0;
        got.status = d.feed(std::string_view(wire).substr(0, split), used, got.body);
        std::string rest = wire.substr(used);
        if (got.status == ChunkedDecoder::Status::need_more) {
            got.status = d.feed(rest, used, got.body);
        }
        INFO("split at " << split);
        if (split == 0) {
            first = got;
        }
        REQUIRE(got.status == first.status);
        REQUIRE(got.body == first.body);
    }
    return first;
}

bool chunked_ok(const std::string& wire) {
    return chunked(wire).status == ChunkedDecoder::Status::done;
}

}  // namespace

TEST_CASE("RFC 9112 §3.2: HTTP/1.1 without Host, or with two, is a 400", "[http][rfc9112]") {
    CHECK(status_of("GET /health HTTP/1.1\r\n\r\n") == 400);
    CHECK(status_of("GET /health HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n") == 400);
    CHECK(status_of("GET /health HTTP/1.1\r\nHost: a\r\nX: 1\r\nhOST: b\r\n\r\n") == 400);
    // Two Host lines are refused in HTTP/1.0 as well; none is fine there.
    CHECK(status_of("GET /health HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n") == 400);
    CHECK(status_of("GET /health HTTP/1.0\r\n\r\n") == 200);
    HttpRequest req;
    REQUIRE(head("GET /health HTTP/1.1\r\nHost: a\r\n\r\n", req).status == ParseStatus::complete);
    CHECK(req.headers.get("Host") == "a");
}

TEST_CASE("RFC 9112 §3.2: a Host with an invalid value is a 400", "[http][rfc9112]") {
    for (const std::string bad : {"a b", "user@a", "a/b", "a:8o", "a:1:2", "[::1", "[::1]x",
                                  "[zz::1]", "[]", "a%2", "a\"b", "a?b", "[v1]"}) {
        INFO(bad);
        CHECK(status_of("GET / HTTP/1.1\r\nHost: " + bad + "\r\n\r\n") == 400);
        CHECK(status_of("GET / HTTP/1.0\r\nHost: " + bad + "\r\n\r\n") == 400);
    }
    // uri-host [":" port]: a name, an IPv4 or bracketed IPv6 address, an empty port, and an
    // empty value (a target without authority, §3.2) are all valid.
    for (const std::string good :
         {"", "example.com", "example.com:8080", "127.0.0.1:1", "[::1]", "[::1]:80",
          "[::ffff:1.2.3.4]", "[v7.a:b]", "a:", "xn--a-b.c", "a%2Fb", "a,b;c=d"}) {
        INFO(good);
        CHECK(status_of("GET / HTTP/1.1\r\nHost: " + good + "\r\n\r\n") == 200);
    }
}

TEST_CASE("RFC 9112 §3.2.2: an absolute-form target is accepted and its authority is Host",
          "[http][rfc9112]") {
    HttpRequest req;
    REQUIRE(head("POST http://w.example:81/completion?x=1 HTTP/1.1\r\nHost: other\r\n\r\n", req)
                .status == ParseStatus::complete);
    CHECK(req.target == "/completion?x=1");
    CHECK(req.headers.get("Host") == "w.example:81");
    CHECK(req.headers.count("Host") == 1);
    REQUIRE(head("GET HTTPS://[::1] HTTP/1.1\r\nHost: x\r\n\r\n", req).status ==
            ParseStatus::complete);
    CHECK(req.target == "/");
    CHECK(req.headers.get("Host") == "[::1]");
    REQUIRE(head("GET http://h?q=1 HTTP/1.1\r\nHost: h\r\n\r\n", req).status ==
            ParseStatus::complete);
    CHECK(req.target == "/?q=1");
    // Still a Host line in HTTP/1.1 (§3.2), a host in the URI, no userinfo, http(s) only.
    CHECK(status_of("GET http://h/ HTTP/1.1\r\n\r\n") == 400);
    CHECK(status_of("GET http:///health HTTP/1.1\r\nHost: h\r\n\r\n") == 400);
    CHECK(status_of("GET http://:80/health HTTP/1.1\r\nHost: h\r\n\r\n") == 400);
    CHECK(status_of("GET http://u:p@h/health HTTP/1.1\r\nHost: h\r\n\r\n") == 400);
    CHECK(status_of("GET ftp://h/health HTTP/1.1\r\nHost: h\r\n\r\n") == 400);
    CHECK(status_of("GET http:/health HTTP/1.1\r\nHost: h\r\n\r\n") == 400);
    // HTTP/1.0 needs no Host line, and gets the authority as one.
    REQUIRE(head("GET http://h/health HTTP/1.0\r\n\r\n", req).status == ParseStatus::complete);
    CHECK(req.headers.get("Host") == "h");
}

TEST_CASE("RFC 9112 §3.2.3-4: authority-form is CONNECT's, asterisk-form OPTIONS'",
          "[http][rfc9112]") {
    CHECK(status_of("CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n") == 501);
    CHECK(status_of("CONNECT /x HTTP/1.1\r\nHost: h\r\n\r\n") == 501);
    CHECK(status_of("GET h:443 HTTP/1.1\r\nHost: h\r\n\r\n") == 400);
    CHECK(status_of("GET * HTTP/1.1\r\nHost: h\r\n\r\n") == 400);
    HttpRequest req;
    REQUIRE(head("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", req).status == ParseStatus::complete);
    CHECK(req.target == "*");
}

TEST_CASE("RFC 9112 §3, §2.3: the request line and version are held to their grammar",
          "[http][rfc9112]") {
    CHECK(status_of("GET  / HTTP/1.1\r\nHost: h\r\n\r\n") == 400);
    CHECK(status_of("GET / HTTP/1.1 \r\nHost: h\r\n\r\n") == 400);
    CHECK(status_of("GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n") == 400);
    CHECK(status_of("G(T / HTTP/1.1\r\nHost: h\r\n\r\n") == 400);
    CHECK(status_of("GET /\x7f HTTP/1.1\r\nHost: h\r\n\r\n") == 400);
    CHECK(status_of("GET / http/1.1\r\nHost: h\r\n\r\n") == 400);
    CHECK(status_of("GET / HTTP/1.10\r\nHost: h\r\n\r\n") == 400);
    CHECK(status_of("GET / HTTP/1\r\nHost: h\r\n\r\n") == 400);
    CHECK(status_of("GET / HTTP/2.0\r\nHost: h\r\n\r\n") == 505);
    CHECK(status_of("GET / HTTP/0.9\r\nHost: h\r\n\r\n") == 505);
    // The HTTP/2 connection preface (prior knowledge, no Upgrade) is a version the pool does
    // not speak, answered in HTTP/1.1 rather than read as a request for "*".
    CHECK(status_of("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") == 505);
    // A higher minor version is read as the highest one known (§2.3).
    HttpRequest req;
    REQUIRE(head("GET / HTTP/1.7\r\nHost: h\r\n\r\n", req).status == ParseStatus::complete);
    CHECK(req.version_minor == 1);
    // Empty lines before the request line are ignored (§2.2).
    REQUIRE(head("\r\n\r\nGET /a HTTP/1.1\r\nHost: h\r\n\r\n", req).status ==
            ParseStatus::complete);
    CHECK(req.target == "/a");
}

TEST_CASE("RFC 9112 §2.2, §5: field lines are refused, never repaired", "[http][rfc9112]") {
    // Whitespace between the start line and the first field, obs-fold, whitespace before
    // the colon, bare CR, NUL and other controls in a value.
    CHECK(status_of("GET / HTTP/1.1\r\n Host: h\r\n\r\n") == 400);
    CHECK(status_of("GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n\tb\r\n\r\n") == 400);
    CHECK(status_of("GET / HTTP/1.1\r\nHost : h\r\n\r\n") == 400);
    CHECK(status_of("GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n") == 400);
    CHECK(status_of(std::string("GET / HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n"sv)) == 400);
    CHECK(status_of("GET / HTTP/1.1\r\nHost: h\r\nX\x01: a\r\n\r\n") == 400);
    CHECK(status_of("GET / HTTP/1.1\r\nHost: h\r\n: a\r\n\r\n") == 400);
    CHECK(status_of("GET / HTTP/1.1\r\nHost: h\r\nno colon\r\n\r\n") == 400);
    // Leading and trailing whitespace is not part of the value; obs-text is.
    HttpRequest req;
    REQUIRE(head("GET / HTTP/1.1\r\nHost: h\r\nX: \t a \xff \t\r\n\r\n", req).status ==
            ParseStatus::complete);
    CHECK(req.headers.get("X") == "a \xff");
}

TEST_CASE("RFC 9112 §6.1, §6.3: Transfer-Encoding the pool cannot frame is refused",
          "[http][rfc9112]") {
    const std::string post = "POST /completion HTTP/1.1\r\nHost: h\r\n";
    CHECK(framing_status(post + "Transfer-Encoding: chunked\r\n\r\n") == 200);
    CHECK(framing_status(post + "Transfer-Encoding: CHUNKED\r\n\r\n") == 200);
    CHECK(framing_status(post + "Transfer-Encoding: , chunked ,\r\n\r\n") == 200);
    // chunked not final: the end of the body cannot be known, 400 (§6.3 rule 4).
    CHECK(framing_status(post + "Transfer-Encoding: chunked, gzip\r\n\r\n") == 400);
    CHECK(framing_status(post + "Transfer-Encoding: gzip\r\n\r\n") == 400);
    CHECK(framing_status(post + "Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n") ==
          400);
    CHECK(framing_status(post + "Transfer-Encoding: \r\n\r\n") == 400);
    CHECK(framing_status(post + "Transfer-Encoding: chunked;q=1\r\n\r\n") == 400);
    CHECK(framing_status(post + "Transfer-Encoding: xchunked\r\n\r\n") == 400);
    // Framed, but by codings the pool does not implement: 501 (§6.1).
    CHECK(framing_status(post + "Transfer-Encoding: gzip, chunked\r\n\r\n") == 501);
    CHECK(framing_status(
              post + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n") == 501);
    // With Content-Length too: refused, whatever the order (§6.1, §6.3 rule 3).
    CHECK(framing_status(post + "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n") == 400);
    CHECK(framing_status(post + "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n") == 400);
    // HTTP/1.0 has no transfer codings: the framing is faulty (§6.1).
    CHECK(framing_status("POST /completion HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n") == 400);
}

TEST_CASE("RFC 9112 §6.2-3, RFC 9110 §8.6: Content-Length is a number the pool can hold",
          "[http][rfc9112]") {
    const std::string post = "POST /completion HTTP/1.1\r\nHost: h\r\n";
    HttpRequest req;
    REQUIRE(head(post + "Content-Length: 007\r\n\r\n", req).status == ParseStatus::complete);
    CHECK(request_framing(req).framing.length == 7);
    REQUIRE(head(post + "Content-Length: 7, 7\r\nContent-Length: 7\r\n\r\n", req).status ==
            ParseStatus::complete);
    CHECK(request_framing(req).framing.length == 7);
    for (const std::string bad :
         {"+7", "-7", "0x7", "7 7", "7,", "", "7.0", "1e3", "99999999999999999999999", "7, 8"}) {
        INFO(bad);
        CHECK(framing_status(post + "Content-Length: " + bad + "\r\n\r\n") == 400);
    }
    // Neither field: no body (§6.3 rule 7), whatever follows is the next request.
    REQUIRE(head(post + "\r\n", req).status == ParseStatus::complete);
    CHECK(request_framing(req).framing.kind == BodyFraming::Kind::none);
}

TEST_CASE("RFC 9112 §7.1: chunk sizes and extensions are held to their grammar",
          "[http][rfc9112]") {
    CHECK(chunked("5\r\nhello\r\n0\r\n\r\n").body == "hello");
    CHECK(chunked("A\r\n0123456789\r\n0\r\n\r\n").body == "0123456789");
    CHECK(chunked("005\r\nhello\r\n0000\r\n\r\n").body == "hello");
    // Extensions are ignored once they parse (§7.1.1), with BWS around ';' and '='.
    CHECK(chunked("5;a\r\nhello\r\n0;b=1\r\n\r\n").body == "hello");
    CHECK(chunked("5 ; a = b ;c=\"q;\\\"x\"\r\nhello\r\n0\r\n\r\n").body == "hello");
    for (const std::string bad :
         {" 5\r\nhello\r\n0\r\n\r\n", "5 \r\nhello\r\n0\r\n\r\n", "0x5\r\nhello\r\n0\r\n\r\n",
          "+5\r\nhello\r\n0\r\n\r\n", "5;\r\nhello\r\n0\r\n\r\n", "5;a=\r\nhello\r\n0\r\n\r\n",
          "5;a=\"x\r\nhello\r\n0\r\n\r\n", "5;a\rb\r\nhello\r\n0\r\n\r\n",
          "5\r\r\nhello\r\n0\r\n\r\n", "5,5\r\nhello\r\n0\r\n\r\n", "5;\"a\"\r\nhello\r\n0\r\n\r\n",
          "1000000000000000\r\n", "\r\n", "5\r\nhelloX\r\n0\r\n\r\n", "5\r\nhello\r\r\n"}) {
        INFO(bad);
        CHECK(chunked(bad).status == ChunkedDecoder::Status::error);
    }
}

TEST_CASE("RFC 9112 §7.1.2: trailers are field lines, bounded, and dropped", "[http][rfc9112]") {
    CHECK(chunked_ok("1\r\nx\r\n0\r\nA: 1\r\nB-2: two words\r\n\r\n"));
    CHECK(chunked("1\r\nx\r\n0\r\nA: 1\r\n\r\n").body == "x");
    CHECK_FALSE(chunked_ok("0\r\nno colon\r\n\r\n"));
    CHECK_FALSE(chunked_ok("0\r\nA : 1\r\n\r\n"));
    CHECK_FALSE(chunked_ok("0\r\nA: 1\r\n folded\r\n\r\n"));
    CHECK_FALSE(chunked_ok("0\r\nA: a\rb\r\n\r\n"));
    // A flood of small trailer lines ends, like a head, at 16 KiB.
    std::string flood = "0\r\n";
    for (int i = 0; i < 2000; ++i) {
        flood += "T: 123456\r\n";
    }
    ChunkedDecoder d;
    std::string out;
    std::size_t used = 0;
    CHECK(d.feed(flood, used, out) == ChunkedDecoder::Status::error);
    CHECK(d.error() == "trailer section too large");
}

TEST_CASE("RFC 9112 §6.1, §6.3: a worker's framing is held to the same rules", "[http][rfc9112]") {
    HttpResponseHead h10;
    REQUIRE(parse_response_head("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", {}, h10)
                .status == ParseStatus::complete);
    CHECK(response_framing(h10, false).error_status == 502);
    HttpResponseHead gzip;
    REQUIRE(
        parse_response_head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", {}, gzip)
            .status == ParseStatus::complete);
    CHECK(response_framing(gzip, false).error_status == 502);
    // An invalid or conflicting length: the reply is discarded for a 502 (§6.3 rule 5).
    for (const std::string bad : {"1, 2", "x", "-1", "99999999999999999999999"}) {
        INFO(bad);
        HttpResponseHead h;
        REQUIRE(parse_response_head("HTTP/1.1 200 OK\r\nContent-Length: " + bad + "\r\n\r\n", {}, h)
                    .status == ParseStatus::complete);
        CHECK(response_framing(h, false).error_status == 502);
    }
}

TEST_CASE("RFC 9112 §9.3, §9.6: which requests leave the connection open", "[http][rfc9112]") {
    HttpRequest req;
    REQUIRE(head("GET / HTTP/1.1\r\nHost: h\r\n\r\n", req).status == ParseStatus::complete);
    CHECK(req.keep_alive());
    REQUIRE(head("GET / HTTP/1.1\r\nHost: h\r\nConnection: x, CLOSE\r\n\r\n", req).status ==
            ParseStatus::complete);
    CHECK_FALSE(req.keep_alive());
    REQUIRE(head("GET / HTTP/1.0\r\n\r\n", req).status == ParseStatus::complete);
    CHECK_FALSE(req.keep_alive());
    REQUIRE(head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", req).status ==
            ParseStatus::complete);
    CHECK(req.keep_alive());
}

TEST_CASE("RFC 9110 §7.2: the Host the pool sends is one its own parser accepts",
          "[http][rfc9112]") {
    CHECK(host_header_for("127.0.0.1", 8080) == "127.0.0.1:8080");
    CHECK(host_header_for("worker-1.internal", 80) == "worker-1.internal:80");
    CHECK(host_header_for("::1", 8080) == "[::1]:8080");
    CHECK(host_header_for("fe80::1:2", 1) == "[fe80::1:2]:1");
    for (const auto& [host, port] :
         {std::pair<std::string, int>{"127.0.0.1", 1}, {"::1", 65535}, {"w.example", 8080}}) {
        const auto value = host_header_for(host, static_cast<std::uint16_t>(port));
        INFO(value);
        CHECK(status_of("GET /health HTTP/1.1\r\nHost: " + value + "\r\n\r\n") == 200);
    }
}

namespace {

// A worker's reply read by the pool's upstream client: `wire` is all there before the read
// starts (a socketpair stands in for the connection), so nothing waits on time.
struct ClientRead {
    IoStatus head_io = IoStatus::ok;
    HttpResponseHead head;
    std::string body;
    bool reusable = false;
};

ClientRead client_reads(const std::string& wire) {
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
    Fd worker(fds[0]);
    HttpClientConnection conn{Fd(fds[1])};
    const auto deadline = Clock::now() + std::chrono::seconds(5);
    REQUIRE(write_all(worker.get(), wire, deadline) == IoStatus::ok);
    ClientRead r;
    std::string error;
    r.head_io = conn.read_head(r.head, false, deadline, error);
    if (r.head_io != IoStatus::ok) {
        return r;
    }
    for (bool done = false; !done;) {
        REQUIRE(conn.read_body(r.body, done, deadline, error) == IoStatus::ok);
    }
    r.reusable = conn.reusable();
    return r;
}

}  // namespace

TEST_CASE("RFC 9110 §15.2: a worker's 1xx answers are interim, read past, and 101 is refused",
          "[http][rfc9112]") {
    for (const int s : {100, 102, 103, 199}) {
        CHECK(response_kind(s) == ResponseKind::interim);
    }
    CHECK(response_kind(101) == ResponseKind::unrequested_switch);
    for (const int s : {200, 204, 304, 502}) {
        CHECK(response_kind(s) == ResponseKind::final_response);
    }
    const std::string ok = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    for (const std::string interim :
         {"", "HTTP/1.1 100 Continue\r\n\r\n",
          "HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n",
          "HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n"}) {
        INFO(interim);
        const auto r = client_reads(interim + ok);
        REQUIRE(r.head_io == IoStatus::ok);
        CHECK(r.head.status == 200);
        CHECK(r.body == "hello");
        CHECK(r.reusable);
    }
    // The pool forwards no Upgrade, so a switch was never asked for: the reply is broken.
    CHECK(client_reads("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n" + ok).head_io ==
          IoStatus::error);
}

TEST_CASE("RFC 9112 §6.3: a worker's length beside chunked coding is dropped, the link not reused",
          "[http][rfc9112]") {
    const auto r = client_reads(
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5\r\nhello\r\n0\r\n\r\n");
    REQUIRE(r.head_io == IoStatus::ok);
    CHECK(r.body == "hello");
    CHECK_FALSE(r.reusable);
    // The same reply without the length leaves the connection reusable.
    CHECK(
        client_reads("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
            .reusable);
}

TEST_CASE("RFC 9112 §5.1-2: obs-fold or a space before a colon makes a worker's reply a 502",
          "[http][rfc9112]") {
    for (const std::string wire :
         {"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n",
          "HTTP/1.1 200 OK\r\nX-A : 1\r\nContent-Length: 0\r\n\r\n"}) {
        INFO(wire);
        // Read cut short at every byte: nothing is decided before the head ends.
        for (std::size_t split = 0; split <= wire.size(); ++split) {
            INFO("split at " << split);
            HttpResponseHead h;
            const auto r = parse_response_head(std::string_view(wire).substr(0, split), {}, h);
            if (split < wire.size()) {
                CHECK(r.status == ParseStatus::incomplete);
            } else {
                CHECK(r.status == ParseStatus::error);
                CHECK(r.error_status == 502);
            }
        }
    }
}

TEST_CASE("RFC 9112 §9.6: a worker's close, or HTTP/1.0 without keep-alive, ends the link",
          "[http][rfc9112]") {
    CHECK_FALSE(
        client_reads("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello")
            .reusable);
    CHECK_FALSE(client_reads("HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello").reusable);
    CHECK(client_reads("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\n"
                       "hello")
              .reusable);
}
