// UsageScanner, our reader of a worker's reply (a JSON body, or an SSE stream of
// `data: {...}` events ending in `data: [DONE]`) for token counts. It runs in the relay after
// the whole reply went to the client: if it throws, the handler's catch aborts a response
// that was complete; if it crashes, the pool goes down with every stream in flight.

#include <cstdint>
#include <string_view>

#include "proxy/usage_scanner.hpp"
#include "test/fuzz/fuzz_support.hpp"

using namespace llama_pool;

namespace {

bool same(const UsageScanner::Usage& a, const UsageScanner::Usage& b) {
    return a.found == b.found && a.predicted == b.predicted && a.prompt == b.prompt;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto input = fuzz::as_text(data, size);
    // A tail shorter than the input now and then, so that truncation is exercised.
    const auto h = fuzz::input_hash(input);
    const std::size_t max_tail = h % 3 == 0 ? 1 + (h >> 8) % (input.size() + 1) : 256 * 1024;

    UsageScanner whole(max_tail);
    whole.feed(input);
    const auto stream = whole.finish(true);
    const auto body = whole.finish(false);
    for (const auto& usage : {stream, body}) {
        if (!usage.found) {
            FUZZ_CHECK(usage.predicted == 0 && usage.prompt == 0);
        }
        // The counts go to Prometheus counters (PoolMetrics::tokens), whose inc() throws on
        // a negative increment.
        FUZZ_CHECK(usage.predicted >= 0 && usage.prompt >= 0);
    }

    // The relay feeds whatever pieces the worker's reads produced; the counts must not
    // depend on them.
    UsageScanner pieces(max_tail);
    const auto a = fuzz::split_point(input, 1);
    auto b = fuzz::split_point(input, 2);
    if (b < a) {
        b = a;
    }
    pieces.feed(input.substr(0, a));
    pieces.feed(input.substr(a, b - a));
    pieces.feed({});
    pieces.feed(input.substr(b));
    FUZZ_CHECK(same(pieces.finish(true), stream));
    FUZZ_CHECK(same(pieces.finish(false), body));
    return 0;
}
