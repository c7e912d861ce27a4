// The chunker cuts whatever text a client sends to /v1/summarize (any language, any bytes
// that survive JSON decoding, and arbitrary bytes here for good measure). Whatever the input
// and sizes, the fresh parts must tile the text exactly, chunks must respect their bounds,
// and the overlap must come from the previous chunk's own new text.

#include <cstdint>
#include <string>
#include <string_view>

#include "test/fuzz/fuzz_support.hpp"
#include "workloads/chunker.hpp"

using namespace llama_pool;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto text = fuzz::as_text(data, size);
    const auto h = fuzz::input_hash(text);
    ChunkerOptions options;
    options.max_chars = 2 + h % 300;
    options.overlap = (h >> 16) % 200;
    const auto overlap = std::min(options.overlap, options.max_chars / 2);
    const auto chunks = chunk_text(text, options);
    FUZZ_CHECK(chunks.empty() == text.empty());
    std::size_t covered = 0;
    for (std::size_t i = 0; i < chunks.size(); ++i) {
        const auto& c = chunks[i];
        FUZZ_CHECK(c.begin <= c.fresh_begin && c.fresh_begin < c.end && c.end <= text.size());
        FUZZ_CHECK(c.fresh_begin == covered);
        covered = c.end;
        FUZZ_CHECK(count_chars(text.substr(c.begin, c.end - c.begin)) <= options.max_chars);
        FUZZ_CHECK(count_chars(text.substr(c.begin, c.fresh_begin - c.begin)) <= overlap);
        FUZZ_CHECK(i == 0 ? c.begin == 0 : c.begin >= chunks[i - 1].fresh_begin);
    }
    FUZZ_CHECK(covered == text.size());
    return 0;
}
