#pragma once

#include <cstddef>
#include <string_view>
#include <vector>

namespace llama_pool {

// Sizes are in characters (Unicode code points), the unit people and the n8n node count in.
struct ChunkerOptions {
    std::size_t max_chars = 2048;  // a chunk, its overlap included, never exceeds this
    // Text of the previous chunk repeated at the start of the next one, so a fact cut at a
    // boundary is seen whole once. At most this many characters; clamped to max_chars / 2.
    std::size_t overlap = 200;
};

// A chunk as byte offsets into the text. [begin, fresh_begin) repeats the end of the
// previous chunk; [fresh_begin, end) is text no earlier chunk had. Offsets always fall on
// UTF-8 character boundaries.
struct Chunk {
    std::size_t begin = 0;
    std::size_t fresh_begin = 0;
    std::size_t end = 0;
};

// Cuts `text` into chunks at sentence ends where it can, at word boundaries inside a
// sentence too long for one chunk, and between characters only when a word is. Nothing is
// dropped or reordered: the fresh parts of the chunks, concatenated, are exactly `text`
// (text after the last punctuation, text with none, any language). The overlap starts at a
// sentence start in the previous chunk when one is close enough to the end, else at a word
// start, else there is none. Empty text gives no chunks.
std::vector<Chunk> chunk_text(std::string_view text, const ChunkerOptions& options);

// Code points in `text`; a byte that cannot start one (invalid UTF-8) counts with the
// character before it.
std::size_t count_chars(std::string_view text);

}  // namespace llama_pool
