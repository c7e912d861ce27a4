// Our HTTP request parsing against Boost.Beast's request_parser, input by input (issue 18,
// "try Beast's parser against the fuzz corpus and the hostile-client tests"). A measuring
// program, not a test: it prints where the two disagree and what each costs per request,
// and asserts nothing, because a disagreement is a finding to weigh, not a failure.
//
// "Ours" is what HttpServer::read_request does with a buffer, without the socket:
// parse_request_head, request_framing, the body limit (413) and the chunked decoder.
// "Beast" is request_parser<string_body> with the same head and body limits, its errors
// mapped to the statuses an adopter would send (header_limit 431, body_limit 413,
// bad_version 505, anything else 400). Deadlines (408) belong to neither parser: both say
// "need more" and the server's clock decides.
//
// usage: http_parser_compare CORPUS_DIR... [--time N] [--all]
//   each CORPUS_DIR is read file by file; a directory named *chunked* holds chunked bodies,
//   which are sent after a chunked POST head.

// Boost 1.74's asio/awaitable.hpp uses std::exchange without including <utility>, which
// C++20 headers no longer pull in by chance: it must come first.
// clang-format off
#include <utility>
// clang-format on

#include <algorithm>
#include <boost/beast/core/error.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "common/http_parser.hpp"

namespace {

namespace http = boost::beast::http;
using llama_pool::BodyFraming;
using llama_pool::ChunkedDecoder;
using llama_pool::HeadLimits;
using llama_pool::HttpRequest;
using llama_pool::ParseStatus;

constexpr std::size_t kMaxBody = 1024 * 1024;  // the same for both; small to keep inputs small

// One message read off the front of a buffer.
struct Outcome {
    enum class Kind { complete, incomplete, refused };
    Kind kind = Kind::incomplete;
    int status = 0;  // when refused
    std::size_t consumed = 0;
    std::string method, target, body;
    std::string why;

    std::string describe() const {
        switch (kind) {
            case Kind::complete:
                return "ok " + method + " " + target.substr(0, 40) +
                       " body=" + std::to_string(body.size()) + " used=" + std::to_string(consumed);
            case Kind::incomplete:
                return "need more";
            case Kind::refused:
                return std::to_string(status) + " (" + why + ")";
        }
        return {};
    }
    bool same_as(const Outcome& o) const {
        return kind == o.kind && status == o.status && consumed == o.consumed &&
               method == o.method && target == o.target && body == o.body;
    }
};

Outcome ours(std::string_view buffer, const HeadLimits& limits) {
    Outcome out;
    HttpRequest request;
    const auto head = llama_pool::parse_request_head(buffer, limits, request);
    if (head.status == ParseStatus::incomplete) {
        return out;
    }
    out.kind = Outcome::Kind::refused;
    if (head.status == ParseStatus::error) {
        out.status = head.error_status;
        out.why = head.error;
        return out;
    }
    const auto framing = llama_pool::request_framing(request);
    if (framing.error_status != 0) {
        out.status = framing.error_status;
        out.why = framing.error;
        return out;
    }
    auto rest = buffer.substr(head.consumed);
    const auto kind = framing.framing.kind;
    if (kind == BodyFraming::Kind::length) {
        if (framing.framing.length > kMaxBody) {
            out.status = 413;
            out.why = "length over the limit";
            return out;
        }
        if (rest.size() < framing.framing.length) {
            out.kind = Outcome::Kind::incomplete;
            return out;
        }
        out.body.assign(rest.substr(0, framing.framing.length));
        out.consumed = head.consumed + framing.framing.length;
    } else if (kind == BodyFraming::Kind::chunked) {
        ChunkedDecoder decoder;
        std::size_t used = 0;
        const auto st = decoder.feed(rest, used, out.body);
        if (out.body.size() > kMaxBody) {
            out.status = 413;
            out.why = "chunked body over the limit";
            out.body.clear();
            return out;
        }
        if (st == ChunkedDecoder::Status::error) {
            out.status = 400;
            out.why = "chunked: " + decoder.error();
            out.body.clear();
            return out;
        }
        if (st == ChunkedDecoder::Status::need_more) {
            out.kind = Outcome::Kind::incomplete;
            out.body.clear();
            return out;
        }
        out.consumed = head.consumed + used;
    } else {
        out.consumed = head.consumed;
    }
    out.kind = Outcome::Kind::complete;
    out.method = request.method;
    out.target = request.target;
    return out;
}

int beast_status(const boost::beast::error_code& ec) {
    if (ec == http::error::header_limit) {
        return 431;
    }
    if (ec == http::error::body_limit) {
        return 413;
    }
    if (ec == http::error::bad_version) {
        return 505;
    }
    return 400;
}

Outcome beast(std::string_view buffer, const HeadLimits& limits) {
    Outcome out;
    http::request_parser<http::string_body> parser;
    parser.header_limit(static_cast<std::uint32_t>(limits.max_head_bytes));
    parser.body_limit(kMaxBody);
    parser.eager(true);
    std::size_t used = 0;
    boost::beast::error_code ec;
    while (!parser.is_done()) {
        const auto n =
            parser.put(boost::asio::const_buffer(buffer.data() + used, buffer.size() - used), ec);
        used += n;
        if (ec == http::error::need_more) {
            return out;  // incomplete
        }
        if (ec) {
            out.kind = Outcome::Kind::refused;
            out.status = beast_status(ec);
            out.why = ec.message();
            return out;
        }
        if (n == 0 && !parser.is_done()) {
            return out;
        }
    }
    const auto& message = parser.get();
    out.kind = Outcome::Kind::complete;
    out.consumed = used;
    out.method = std::string(message.method_string());
    out.target = std::string(message.target());
    out.body = message.body();
    return out;
}

struct Case {
    std::string name;
    std::string bytes;
};

std::string read_file(const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

const std::string kChunkedHead =
    "POST /completion HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";

std::string post(const std::string& extra_headers, const std::string& body) {
    return "POST /completion HTTP/1.1\r\nHost: x\r\n" + extra_headers + "\r\n" + body;
}

std::string with_length(const std::string& body, const std::string& extra = "") {
    return post(extra + "Content-Length: " + std::to_string(body.size()) + "\r\n", body);
}

// The hostile and edge requests of test/integration (relay_edges_test.cpp,
// http_conformance_test.cpp, hostile_clients_test.cpp), and the classic smuggling and
// framing cases around them, as raw bytes.
std::vector<Case> hostile_cases() {
    const std::string body = R"({"prompt":"x","max_tokens":2})";
    std::string many_fields;
    for (int i = 0; i < 101; ++i) {
        many_fields += "X-F" + std::to_string(i) + ": v\r\n";
    }
    std::string tiny_chunks;
    for (int i = 0; i < 2000; ++i) {
        tiny_chunks += "1\r\na\r\n";
    }
    std::string big_chunks;
    for (int i = 0; i < 1025; ++i) {
        big_chunks += "400\r\n" + std::string(1024, 'a') + "\r\n";
    }
    std::string long_ext = "1";
    for (int i = 0; i < 1500; ++i) {
        long_ext += ";a=b";
    }
    return {
        {"edge: chunked body", post("Transfer-Encoding: chunked\r\n",
                                    "10\r\n{\"prompt\":\"Hel\",\r\n11\r\n\"max_tokens\":2}  "
                                    "\r\n0\r\n\r\n")},
        {"edge: double slash", "POST //completion HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                                   std::to_string(body.size()) + "\r\n\r\n" + body},
        {"edge: expect 100-continue, head only",
         post("Expect: 100-continue\r\nContent-Length: 29\r\n", "")},
        {"edge: expect other", with_length(body, "Expect: something-else\r\n")},
        {"413: length over limit", post("Content-Length: 2000000\r\n", "{}")},
        {"413: chunked over limit",
         post("Transfer-Encoding: chunked\r\n", big_chunks + "0\r\n\r\n")},
        {"431: 17 KiB field", with_length("{}", "X-Big: " + std::string(17000, 'b') + "\r\n")},
        {"431: 9 KiB field line", with_length("{}", "X-Big: " + std::string(9000, 'b') + "\r\n")},
        {"431: 101 fields", with_length("{}", many_fields)},
        {"414: 9 KiB target", "GET /" + std::string(9000, 'a') + " HTTP/1.1\r\nHost: x\r\n\r\n"},
        {"408: head never ends", "POST /completion HTTP/1.1\r\nHost: x\r\n"},
        {"smuggle: CL+TE",
         post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n")},
        {"smuggle: TE+CL",
         post("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", "0\r\n\r\n")},
        {"smuggle: CL 2 then CL 3", post("Content-Length: 2\r\nContent-Length: 3\r\n", "{}x")},
        {"smuggle: CL 2 twice", post("Content-Length: 2\r\nContent-Length: 2\r\n", "{}")},
        {"smuggle: CL list 2, 2", post("Content-Length: 2, 2\r\n", "{}")},
        {"smuggle: CL +2", post("Content-Length: +2\r\n", "{}")},
        {"smuggle: CL 0x2", post("Content-Length: 0x2\r\n", "{}")},
        {"smuggle: CL overflow", post("Content-Length: 99999999999999999999999\r\n", "{}")},
        {"smuggle: TE chunked twice",
         post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n")},
        {"smuggle: TE chunked, chunked",
         post("Transfer-Encoding: chunked, chunked\r\n", "0\r\n\r\n")},
        {"smuggle: TE xchunked", post("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n")},
        {"smuggle: TE CHUNKED", post("Transfer-Encoding: CHUNKED\r\n", "0\r\n\r\n")},
        {"smuggle: TE identity", post("Transfer-Encoding: identity\r\n", "")},
        {"smuggle: TE chunked, gzip (501)",
         post("Transfer-Encoding: chunked, gzip\r\n", "0\r\n\r\n")},
        {"smuggle: TE gzip, chunked (501)",
         post("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n")},
        {"smuggle: TE in HTTP/1.0",
         "POST /completion HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
        {"smuggle: space before colon", post("Transfer-Encoding : chunked\r\n", "0\r\n\r\n")},
        {"smuggle: TE tab value", post("Transfer-Encoding:\tchunked\r\n", "0\r\n\r\n")},
        {"obs-fold in a field", with_length("{}", "X-A: 1\r\n folded\r\n")},
        {"obs-fold in Transfer-Encoding",
         post("Transfer-Encoding: gzip,\r\n chunked\r\n", "0\r\n\r\n")},
        {"bare LF line ends", "GET /health HTTP/1.1\nHost: x\n\n"},
        {"bare CR in a value", with_length("{}", "X-A: a\rb\r\n")},
        {"bare CR line end", "GET /health HTTP/1.1\rHost: x\r\r"},
        {"NUL in a value", with_length("{}", std::string("X-A: a\0b\r\n", 10))},
        {"NUL in the target", std::string("GET /he\0alth HTTP/1.1\r\nHost: x\r\n\r\n", 34)},
        {"DEL in a value", with_length("{}",
                                       "X-A: a\x7f"
                                       "b\r\n")},
        {"obs-text in a value", with_length("{}", "X-A: caf\xc3\xa9\r\n")},
        {"empty field name", with_length("{}", ": x\r\n")},
        {"lowercase method", "get /health HTTP/1.1\r\nHost: x\r\n\r\n"},
        {"HTTP/1.2", "GET /health HTTP/1.2\r\nHost: x\r\n\r\n"},
        {"HTTP/2.0", "GET /health HTTP/2.0\r\nHost: x\r\n\r\n"},
        {"HTTP/0.9 line", "GET /\r\n\r\n"},
        {"two spaces in request line", "GET  /health HTTP/1.1\r\nHost: x\r\n\r\n"},
        {"no Host in HTTP/1.1", "GET /health HTTP/1.1\r\n\r\n"},
        {"Host twice", "GET /health HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"},
        {"Host a b", "GET /health HTTP/1.1\r\nHost: a b\r\n\r\n"},
        {"Host user@a", "GET /health HTTP/1.1\r\nHost: user@a\r\n\r\n"},
        {"HTTP/1.0 no Host", "GET /health HTTP/1.0\r\n\r\n"},
        {"OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"},
        {"GET *", "GET * HTTP/1.1\r\nHost: x\r\n\r\n"},
        {"CONNECT (501)", "CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n"},
        {"TRACE", "TRACE / HTTP/1.1\r\nHost: x\r\n\r\n"},
        {"absolute-form", "GET http://elsewhere.example/health?a=1 HTTP/1.1\r\nHost: x\r\n\r\n"},
        {"chunk ext bare CR", post("Transfer-Encoding: chunked\r\n", "2;a\rb\r\n{}\r\n0\r\n\r\n")},
        {"chunk ext 6 KB", post("Transfer-Encoding: chunked\r\n", long_ext + "\r\na\r\n0\r\n\r\n")},
        {"chunk size overflow",
         post("Transfer-Encoding: chunked\r\n", "fffffffffffffffff1\r\na\r\n0\r\n\r\n")},
        {"chunk size 0x2", post("Transfer-Encoding: chunked\r\n", "0x2\r\n{}\r\n0\r\n\r\n")},
        {"chunk size 0x5, then a request",
         post("Transfer-Encoding: chunked\r\n",
              "0x5\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")},
        {"TE xchunked, then a request", post("Transfer-Encoding: xchunked\r\n",
                                             "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")},
        {"chunk size leading space",
         post("Transfer-Encoding: chunked\r\n", " 2\r\n{}\r\n0\r\n\r\n")},
        {"chunk data without CRLF", post("Transfer-Encoding: chunked\r\n", "2\r\n{}XX0\r\n\r\n")},
        {"chunk bare LF", post("Transfer-Encoding: chunked\r\n", "2\n{}\n0\n\n")},
        {"2000 one-byte chunks", post("Transfer-Encoding: chunked\r\n", tiny_chunks + "0\r\n\r\n")},
        {"trailer Content-Length",
         post("Transfer-Encoding: chunked\r\n", "2\r\n{}\r\n0\r\nContent-Length: 9\r\n\r\n")},
        {"trailer obs-fold",
         post("Transfer-Encoding: chunked\r\n", "2\r\n{}\r\n0\r\nA: 1\r\n b\r\n\r\n")},
        {"pipelined CL then GET", with_length("{}") + "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"},
    };
}

std::vector<Case> corpus_cases(int argc, char** argv) {
    std::vector<Case> cases;
    for (int i = 1; i < argc; ++i) {
        const std::filesystem::path dir = argv[i];
        if (std::string_view(argv[i]) == "--all") {
            continue;
        }
        if (std::string_view(argv[i]).rfind("--", 0) == 0) {
            ++i;  // an option and its value
            continue;
        }
        const bool chunked = dir.filename().string().find("chunked") != std::string::npos;
        std::vector<std::filesystem::path> files;
        for (const auto& e : std::filesystem::directory_iterator(dir)) {
            files.push_back(e.path());
        }
        std::sort(files.begin(), files.end());
        for (const auto& f : files) {
            const auto bytes = read_file(f);
            cases.push_back({dir.filename().string() + "/" + f.filename().string(),
                             chunked ? kChunkedHead + bytes : bytes});
        }
    }
    return cases;
}

// Reads up to four pipelined messages with each parser and reports the first difference.
int compare(const std::vector<Case>& cases, const HeadLimits& limits, bool all) {
    int differ = 0;
    std::printf("| input | message | ours | Beast |\n|---|---|---|---|\n");
    for (const auto& c : cases) {
        std::string_view a = c.bytes;
        std::string_view b = c.bytes;
        for (int m = 1; m <= 4; ++m) {
            const auto o = ours(a, limits);
            const auto x = beast(b, limits);
            const bool same = o.same_as(x);
            const bool last = !same || o.kind != Outcome::Kind::complete || o.consumed >= a.size();
            if (!same || (all && last)) {
                differ += same ? 0 : 1;
                std::printf("| %s%s | %d | %s | %s |\n", same ? "" : "**differ** ", c.name.c_str(),
                            m, o.describe().c_str(), x.describe().c_str());
            }
            if (last) {
                break;
            }
            a.remove_prefix(o.consumed);
            b.remove_prefix(x.consumed);
        }
    }
    std::printf("\n%zu inputs, %d differ\n", cases.size(), differ);
    return differ;
}

template <typename F>
double ns_per_call(int n, F&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    std::size_t sink = 0;
    for (int i = 0; i < n; ++i) {
        sink += f();
    }
    const auto t1 = std::chrono::steady_clock::now();
    if (sink == 42) {
        std::printf(" ");  // keeps the work observable
    }
    return std::chrono::duration<double, std::nano>(t1 - t0).count() / n;
}

// A llama-server client's POST: the usual fields and a 1 KB JSON body.
void time_parsers(int n, const HeadLimits& limits) {
    std::string prompt(900, 'w');
    for (std::size_t i = 5; i < prompt.size(); i += 6) {
        prompt[i] = ' ';
    }
    const std::string body =
        R"({"prompt":")" + prompt + R"(","n_predict":128,"stream":true,"cache_prompt":true})";
    const std::string request =
        "POST /completion HTTP/1.1\r\nHost: localhost:8081\r\nUser-Agent: python-requests/2.31\r\n"
        "Accept: */*\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n"
        "Content-Type: application/json\r\nAuthorization: Bearer sk-0123456789abcdef\r\n"
        "X-Request-Id: 4f1c2d9e-7b7a-4c3e-9d3f-1a2b3c4d5e6f\r\nContent-Length: " +
        std::to_string(body.size()) + "\r\n\r\n" + body;
    std::string chunked;
    for (std::size_t i = 0; i < body.size(); i += 256) {
        const auto piece = body.substr(i, 256);
        char size[16];
        std::snprintf(size, sizeof size, "%zx\r\n", piece.size());
        chunked += size + piece + "\r\n";
    }
    const std::string chunked_request = request.substr(0, request.find("Content-Length")) +
                                        "Transfer-Encoding: chunked\r\n\r\n" + chunked +
                                        "0\r\n\r\n";
    const std::vector<std::pair<std::string, std::string>> inputs = {{"length", request},
                                                                     {"chunked", chunked_request}};
    for (const auto& [name, bytes] : inputs) {
        if (!ours(bytes, limits).same_as(beast(bytes, limits))) {
            std::printf("timing input %s parses differently\n", name.c_str());
        }
        // Warm up, then three rounds each, interleaved; the fastest round is reported.
        double best_ours = 1e18, best_beast = 1e18;
        for (int round = 0; round < 3; ++round) {
            best_ours =
                std::min(best_ours, ns_per_call(n, [&] { return ours(bytes, limits).consumed; }));
            best_beast =
                std::min(best_beast, ns_per_call(n, [&] { return beast(bytes, limits).consumed; }));
        }
        std::printf("parse %s request (%zu bytes, body %zu): ours %.0f ns, Beast %.0f ns\n",
                    name.c_str(), bytes.size(), body.size(), best_ours, best_beast);
    }
}

}  // namespace

int main(int argc, char** argv) {
    int timing_rounds = 200000;
    bool all = false;
    for (int i = 1; i < argc; ++i) {
        if (std::string_view(argv[i]) == "--time" && i + 1 < argc) {
            timing_rounds = std::stoi(argv[i + 1]);
        } else if (std::string_view(argv[i]) == "--all") {
            all = true;
        }
    }
    const HeadLimits limits;  // the server's defaults: 16 KiB head, 8 KiB line, 100 fields
    std::printf(
        "limits: head %zu, line %zu, fields %zu, body %zu; Beast header_limit %zu, "
        "body_limit %zu; Boost %d\n\n",
        limits.max_head_bytes, limits.max_line_bytes, limits.max_fields, kMaxBody,
        limits.max_head_bytes, kMaxBody, BOOST_VERSION);
    std::printf("## corpus\n\n");
    compare(corpus_cases(argc, argv), limits, all);
    std::printf("\n## hostile and edge requests\n\n");
    compare(hostile_cases(), limits, all);
    std::printf("\n## cost\n\n");
    if (timing_rounds > 0) {
        time_parsers(timing_rounds, limits);
    }
    return 0;
}
