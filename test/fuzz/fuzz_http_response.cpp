// What the upstream client does with a worker's bytes (HttpClientConnection, without the
// socket): the response head, interim 1xx responses (a 101 refused), the body framing and a chunked
// body. Workers are local, but a crashed or foreign process on a worker's port can send anything.

#include <cstdint>
#include <string>
#include <string_view>

#include "common/http_parser.hpp"
#include "test/fuzz/fuzz_support.hpp"

using namespace llama_pool;

namespace {

void check_framing(const HttpResponseHead& head, bool request_was_head,
                   const FramingResult& framing) {
    if (framing.error_status != 0) {
        FUZZ_CHECK(framing.error_status == 502 || framing.error_status == 501);
        FUZZ_CHECK(!framing.error.empty());
        return;
    }
    const bool bodiless =
        request_was_head || head.status < 200 || head.status == 204 || head.status == 304;
    if (bodiless) {
        FUZZ_CHECK(framing.framing.kind == BodyFraming::Kind::none);
    }
    if (framing.framing.kind == BodyFraming::Kind::chunked) {
        FUZZ_CHECK(head.headers.has("Transfer-Encoding"));
    }
    if (framing.framing.kind == BodyFraming::Kind::length) {
        FUZZ_CHECK(framing.framing.length > 0);
        FUZZ_CHECK(head.headers.has("Content-Length"));
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    auto buffer = fuzz::as_text(data, size);
    const bool request_was_head = fuzz::input_hash(buffer) % 5 == 0;
    HeadLimits limits;
    limits.max_head_bytes = 1024 + fuzz::input_hash(buffer) % 2048;
    HttpResponseHead head;
    // As the client does: interim (1xx) heads are skipped, the next one is the response.
    for (int interim = 0; interim < 4; ++interim) {
        head = HttpResponseHead{};
        const auto r = parse_response_head(buffer, limits, head);
        FUZZ_CHECK(r.consumed <= buffer.size());
        if (r.status == ParseStatus::incomplete) {
            FUZZ_CHECK(r.consumed == 0);
            return 0;
        }
        if (r.status == ParseStatus::error) {
            FUZZ_CHECK(r.error_status == 502);
            return 0;
        }
        FUZZ_CHECK(r.consumed > 0 && buffer[r.consumed - 1] == '\n');
        FUZZ_CHECK(head.status >= 100 && head.status <= 599);
        FUZZ_CHECK(head.version_minor == 0 || head.version_minor == 1);
        HttpResponseHead again;
        const auto r2 = parse_response_head(buffer.substr(0, r.consumed), limits, again);
        FUZZ_CHECK(r2.status == ParseStatus::complete && r2.consumed == r.consumed);
        FUZZ_CHECK(again.status == head.status && again.reason == head.reason);
        FUZZ_CHECK(again.headers.fields() == head.headers.fields());
        for (const auto& [name, value] : head.headers.fields()) {
            FUZZ_CHECK(value.find_first_of("\r\n") == std::string::npos);
        }
        buffer.remove_prefix(r.consumed);
        const auto kind = response_kind(head.status);
        FUZZ_CHECK((kind == ResponseKind::interim) == (head.status < 200 && head.status != 101));
        if (kind == ResponseKind::unrequested_switch) {
            return 0;  // the client refuses the reply
        }
        if (kind == ResponseKind::final_response) {
            break;
        }
    }

    const auto framing = response_framing(head, request_was_head);
    check_framing(head, request_was_head, framing);
    if (framing.framing.kind != BodyFraming::Kind::chunked) {
        return 0;
    }
    // A body split across reads decodes to the same bytes as one read.
    std::string whole;
    std::size_t whole_used = 0;
    ChunkedDecoder one;
    const auto whole_status = one.feed(buffer, whole_used, whole);
    FUZZ_CHECK(whole_used <= buffer.size());

    const auto split = fuzz::split_point(buffer, 1);
    std::string pieces;
    ChunkedDecoder two;
    std::size_t used_a = 0;
    auto status = two.feed(buffer.substr(0, split), used_a, pieces);
    std::size_t used_b = 0;
    if (status == ChunkedDecoder::Status::need_more) {
        FUZZ_CHECK(used_a == split);
        status = two.feed(buffer.substr(split), used_b, pieces);
    }
    FUZZ_CHECK(status == whole_status);
    FUZZ_CHECK(pieces == whole);
    if (status == ChunkedDecoder::Status::done) {
        FUZZ_CHECK(used_a + used_b == whole_used);
    }
    return 0;
}
