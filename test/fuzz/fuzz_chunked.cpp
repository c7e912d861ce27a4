// ChunkedDecoder, the one decoder for chunked request bodies (client side) and chunked
// response bodies (worker side). Bytes arrive in whatever pieces TCP delivers, so the result
// must not depend on where the input is cut: a decoder that reads a chunk boundary
// differently across a cut is a smuggling vector.

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/http_parser.hpp"
#include "test/fuzz/fuzz_support.hpp"

using namespace llama_pool;

namespace {

struct Decoded {
    ChunkedDecoder::Status status = ChunkedDecoder::Status::need_more;
    std::string body;
    std::string error;
    std::size_t used = 0;  // input bytes up to the end of the chunked body, when done
};

// Feeds `input` cut at `cuts` (ascending positions), as HttpServer::read_request does:
// unused bytes stay in the buffer and the next read is appended to them.
template <typename Cuts>
Decoded decode(std::string_view input, const Cuts& cuts, std::size_t max_line) {
    ChunkedDecoder decoder(max_line);
    Decoded d;
    std::string buffer;
    std::size_t taken = 0;  // input bytes appended to the buffer so far
    auto run = [&](std::size_t upto) {
        buffer.append(input.substr(taken, upto - taken));
        taken = upto;
        std::size_t used = 0;
        d.status = decoder.feed(buffer, used, d.body);
        FUZZ_CHECK(used <= buffer.size());
        if (d.status == ChunkedDecoder::Status::need_more) {
            // Everything offered is either payload or part of a line kept inside.
            FUZZ_CHECK(used == buffer.size());
        }
        buffer.erase(0, used);
        d.used = taken - buffer.size();
    };
    for (const auto cut : cuts) {
        if (d.status != ChunkedDecoder::Status::need_more) {
            break;
        }
        run(cut);
    }
    if (d.status == ChunkedDecoder::Status::need_more) {
        run(input.size());
    }
    d.error = decoder.error();
    return d;
}

void check_same(const Decoded& a, const Decoded& b) {
    FUZZ_CHECK(a.status == b.status);
    FUZZ_CHECK(a.body == b.body);
    FUZZ_CHECK(a.error == b.error);
    if (a.status == ChunkedDecoder::Status::done) {
        FUZZ_CHECK(a.used == b.used);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto input = fuzz::as_text(data, size);
    const std::size_t max_line = 4 + fuzz::input_hash(input) % 64;

    const auto whole = decode(input, std::initializer_list<std::size_t>{}, max_line);
    FUZZ_CHECK(whole.body.size() <= input.size());
    if (whole.status == ChunkedDecoder::Status::done) {
        FUZZ_CHECK(whole.used > 0 && input[whole.used - 1] == '\n');
    }
    if (whole.status == ChunkedDecoder::Status::error) {
        FUZZ_CHECK(!whole.error.empty());
    }

    // Two reads, cut anywhere.
    const auto cut = fuzz::split_point(input, 1);
    check_same(whole, decode(input, std::initializer_list<std::size_t>{cut}, max_line));

    // Three reads.
    auto a = fuzz::split_point(input, 2);
    auto b = fuzz::split_point(input, 3);
    if (a > b) {
        std::swap(a, b);
    }
    check_same(whole, decode(input, std::initializer_list<std::size_t>{a, b}, max_line));

    // One byte per read: every boundary at once (CR and LF apart, size digits apart).
    if (input.size() <= 1024) {
        std::vector<std::size_t> every;
        for (std::size_t i = 1; i < input.size(); ++i) {
            every.push_back(i);
        }
        check_same(whole, decode(input, every, max_line));
    }
    return 0;
}
