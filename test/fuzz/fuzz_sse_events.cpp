// SseFramer, the relay's cutter of event streams: a client must only ever get whole SSE
// events, so that a worker dying in the middle of one leaves no half event behind. Whatever
// the worker sends and however its reads split it, no byte may be lost, reordered or
// changed, every cut must fall on an event boundary, and where the cuts fall must not depend
// on the split. The error event that ends a cut stream must be one well-formed event.

#include <algorithm>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/sse_framer.hpp"
#include "test/fuzz/fuzz_support.hpp"

using namespace llama_pool;

namespace {

// The end of the last complete event in `bytes` (0 when none): just past a line feed that
// closes an empty line, "\n\n" or "\n\r\n".
std::size_t last_boundary(std::string_view bytes) {
    std::size_t boundary = 0;
    std::size_t line_start = 0;
    for (std::size_t i = 0; i < bytes.size(); ++i) {
        if (bytes[i] == '\n') {
            const auto line = bytes.substr(line_start, i - line_start);
            if (line.empty() || line == "\r") {
                boundary = i + 1;
            }
            line_start = i + 1;
        }
    }
    return boundary;
}

bool ends_an_event(std::string_view cut) {
    return !cut.empty() && last_boundary(cut) == cut.size();
}

// Feeds `input` in the pieces `splits` mark, taking after each; returns everything taken.
std::string run(std::string_view input, const std::vector<std::size_t>& splits,
                std::size_t max_pending, SseFramer& framer) {
    std::string taken;
    std::size_t pos = 0;
    for (std::size_t i = 0; i <= splits.size(); ++i) {
        const auto end = i < splits.size() ? splits[i] : input.size();
        framer.feed(input.substr(pos, end - pos));
        pos = end;
        const auto cut = framer.take();
        if (!framer.unaligned()) {
            FUZZ_CHECK(cut.empty() || ends_an_event(cut));
        }
        taken += cut;
        // What is held back is bounded, starts at a line start and holds no complete event.
        FUZZ_CHECK(framer.pending().size() <= max_pending);
        if (!framer.unaligned()) {
            FUZZ_CHECK(last_boundary(framer.pending()) == 0);
        }
    }
    return taken;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto input = fuzz::as_text(data, size);
    const auto h = fuzz::input_hash(input);

    // Split points from the hash, sorted; and one byte at a time for short inputs.
    std::vector<std::size_t> splits = {fuzz::split_point(input, 1), fuzz::split_point(input, 2),
                                       fuzz::split_point(input, 3)};
    std::sort(splits.begin(), splits.end());
    std::vector<std::size_t> bytewise;
    if (input.size() <= 512) {
        for (std::size_t i = 1; i < input.size(); ++i) {
            bytewise.push_back(i);
        }
    }
    const std::string expected(input.substr(0, last_boundary(input)));
    for (const auto* cuts : {&splits, &bytewise}) {
        SseFramer framer;  // the default limit is far above any fuzz input
        const auto taken = run(input, *cuts, 1024 * 1024, framer);
        FUZZ_CHECK(!framer.unaligned());
        FUZZ_CHECK(taken == expected);
        FUZZ_CHECK(taken + framer.pending() == input);
    }

    // A small limit: bytes may then go out unaligned, but none is lost or reordered.
    const std::size_t limit = 1 + h % 64;
    SseFramer small(limit);
    const auto taken = run(input, splits, limit, small);
    FUZZ_CHECK(taken + small.pending() == input);
    if (!small.unaligned()) {
        FUZZ_CHECK(taken == expected);
    }

    // The pool's closing error event, whatever the message holds.
    const auto event = sse_error_event(static_cast<int>(500 + h % 5), input);
    FUZZ_CHECK(event.rfind("data: ", 0) == 0);
    FUZZ_CHECK(ends_an_event(event));
    FUZZ_CHECK(event.find('\n') == event.size() - 2);
    FUZZ_CHECK(event.find('\r') == std::string::npos);
    const auto doc = nlohmann::json::parse(event.substr(6), nullptr, false);
    FUZZ_CHECK(!doc.is_discarded());
    FUZZ_CHECK(doc["error"]["source"] == "llama-pool");
    return 0;
}
