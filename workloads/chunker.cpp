#include "workloads/chunker.hpp"

#include <algorithm>
#include <array>

namespace llama_pool {

namespace {

bool is_continuation(unsigned char byte) {
    return (byte & 0xC0) == 0x80;
}

bool is_space(unsigned char byte) {
    return byte == ' ' || byte == '\n' || byte == '\t' || byte == '\r' || byte == '\f' ||
           byte == '\v';
}

// The byte after the character that starts at `pos`.
std::size_t next_char(std::string_view text, std::size_t pos) {
    ++pos;
    while (pos < text.size() && is_continuation(static_cast<unsigned char>(text[pos]))) {
        ++pos;
    }
    return pos;
}

// Where `n` characters after `pos` end (or the end of the text).
std::size_t advance_chars(std::string_view text, std::size_t pos, std::size_t n) {
    for (std::size_t i = 0; i < n && pos < text.size(); ++i) {
        pos = next_char(text, pos);
    }
    return pos;
}

bool starts_with_at(std::string_view text, std::size_t pos, std::string_view what) {
    return text.substr(pos, what.size()) == what;
}

// Sentence-ending marks beyond ASCII: the ideographic and full-width forms end a sentence
// with no space after them, as written in Chinese and Japanese.
constexpr std::array<std::string_view, 6> kWideTerminators = {
    "\u3002", "\uFF01", "\uFF1F", "\uFF0E",  // 。！？．
    "\u2026", "\u0964",                      // … and the Devanagari danda
};
constexpr std::array<std::string_view, 1> kSpacedTerminators = {"\u061F"};  // Arabic ؟
// Closing marks that belong to the sentence they follow: `He said "no." Then...`.
constexpr std::array<std::string_view, 9> kClosers = {
    "\"", "'", ")", "]", "\u201D", "\u2019", "\u00BB", "\u300D", "\u300F",  // ” ’ » 」 』
};

// Length of a terminator at `pos` (0 if none), and whether it needs a space after it.
std::size_t terminator_at(std::string_view text, std::size_t pos, bool& needs_space) {
    const char c = text[pos];
    if (c == '.' || c == '!' || c == '?') {
        needs_space = true;
        return 1;
    }
    for (const auto t : kWideTerminators) {
        if (starts_with_at(text, pos, t)) {
            needs_space = false;
            return t.size();
        }
    }
    for (const auto t : kSpacedTerminators) {
        if (starts_with_at(text, pos, t)) {
            needs_space = true;
            return t.size();
        }
    }
    return 0;
}

std::size_t closer_at(std::string_view text, std::size_t pos) {
    for (const auto t : kClosers) {
        if (starts_with_at(text, pos, t)) {
            return t.size();
        }
    }
    return 0;
}

// Byte offsets where sentences start, the first being 0. A sentence runs through its
// terminators, closing marks and the whitespace after them; a blank line also ends one, so
// headings and lists without punctuation are sentences of their own.
std::vector<std::size_t> sentence_starts(std::string_view text) {
    std::vector<std::size_t> starts{0};
    std::size_t pos = 0;
    while (pos < text.size()) {
        bool needs_space = true;
        std::size_t len = terminator_at(text, pos, needs_space);
        const bool blank_line = text[pos] == '\n' && pos + 1 < text.size() &&
                                (text[pos + 1] == '\n' || starts_with_at(text, pos + 1, "\r\n"));
        if (len == 0 && !blank_line) {
            pos = next_char(text, pos);
            continue;
        }
        std::size_t end = pos + (len == 0 ? 1 : len);
        if (len != 0) {
            // Runs such as "?!" or "..." and the closing marks after them.
            bool more_needs_space = true;
            while (end < text.size()) {
                if (const auto t = terminator_at(text, end, more_needs_space); t != 0) {
                    end += t;
                } else if (const auto c = closer_at(text, end); c != 0) {
                    end += c;
                } else {
                    break;
                }
            }
        }
        const bool spaced = end < text.size() && is_space(static_cast<unsigned char>(text[end]));
        if (len != 0 && needs_space && !spaced && end < text.size()) {
            pos = end;  // "3.14", "e.g.x", "file.txt": not a sentence end
            continue;
        }
        while (end < text.size() && is_space(static_cast<unsigned char>(text[end]))) {
            ++end;
        }
        if (end < text.size()) {
            starts.push_back(end);
        }
        pos = end;
    }
    return starts;
}

// Cuts [begin, end) into pieces of at most `limit` characters, preferring to cut after
// whitespace; appends the start of every piece after the first.
void split_long(std::string_view text, std::size_t begin, std::size_t end, std::size_t limit,
                std::vector<std::size_t>& out) {
    std::size_t left = count_chars(text.substr(begin, end - begin));
    while (left > limit) {
        const std::size_t hard = advance_chars(text, begin, limit);
        std::size_t cut = hard;
        // The last word start within the limit, when there is one after `begin`.
        for (std::size_t p = hard; p > begin + 1; --p) {
            if (!is_space(static_cast<unsigned char>(text[p])) &&
                is_space(static_cast<unsigned char>(text[p - 1]))) {
                cut = p;
                break;
            }
        }
        out.push_back(cut);
        left -= count_chars(text.substr(begin, cut - begin));
        begin = cut;
    }
}

}  // namespace

std::size_t count_chars(std::string_view text) {
    return static_cast<std::size_t>(std::count_if(text.begin(), text.end(), [](char c) {
        return !is_continuation(static_cast<unsigned char>(c));
    }));
}

std::vector<Chunk> chunk_text(std::string_view text, const ChunkerOptions& options) {
    std::vector<Chunk> chunks;
    if (text.empty()) {
        return chunks;
    }
    const std::size_t max_chars = std::max<std::size_t>(options.max_chars, 2);
    const std::size_t overlap = std::min(options.overlap, max_chars / 2);
    // Every piece fits in a chunk next to the largest overlap, so each chunk takes at least
    // one piece and the loop below always moves forward.
    const std::size_t piece_limit = max_chars - overlap;

    const auto sentences = sentence_starts(text);
    std::vector<std::size_t> pieces;  // piece starts; a sentence start is also a piece start
    std::vector<bool> at_sentence;
    for (std::size_t i = 0; i < sentences.size(); ++i) {
        const std::size_t begin = sentences[i];
        const std::size_t end = i + 1 < sentences.size() ? sentences[i + 1] : text.size();
        pieces.push_back(begin);
        at_sentence.push_back(true);
        split_long(text, begin, end, piece_limit, pieces);
        at_sentence.resize(pieces.size(), false);
    }
    pieces.push_back(text.size());  // sentinel: the end of the last piece

    std::size_t next_piece = 0;  // index of the first piece not yet in a chunk
    while (pieces[next_piece] < text.size()) {
        Chunk chunk;
        chunk.fresh_begin = pieces[next_piece];
        chunk.begin = chunk.fresh_begin;
        if (!chunks.empty() && overlap > 0) {
            const Chunk& prev = chunks.back();
            // The earliest sentence start in the previous chunk's fresh text that leaves at
            // most `overlap` characters to its end.
            std::size_t from = chunk.fresh_begin;
            for (std::size_t i = next_piece; i-- > 0 && pieces[i] >= prev.fresh_begin;) {
                if (count_chars(text.substr(pieces[i], prev.end - pieces[i])) > overlap) {
                    break;
                }
                if (at_sentence[i]) {
                    from = pieces[i];
                }
            }
            if (from == chunk.fresh_begin) {
                // No sentence is short enough: the earliest word start in reach instead.
                std::size_t p = prev.end;
                for (std::size_t n = 0; n < overlap && p > prev.fresh_begin; ++n) {
                    do {
                        --p;
                    } while (p > prev.fresh_begin &&
                             is_continuation(static_cast<unsigned char>(text[p])));
                    if (p > prev.fresh_begin && !is_space(static_cast<unsigned char>(text[p])) &&
                        is_space(static_cast<unsigned char>(text[p - 1]))) {
                        from = p;
                    }
                }
            }
            chunk.begin = from;
        }
        std::size_t used = count_chars(text.substr(chunk.begin, chunk.fresh_begin - chunk.begin));
        chunk.end = chunk.fresh_begin;
        while (pieces[next_piece] < text.size()) {
            const std::size_t piece_end = pieces[next_piece + 1];
            const std::size_t n = count_chars(text.substr(chunk.end, piece_end - chunk.end));
            if (chunk.end != chunk.fresh_begin && used + n > max_chars) {
                break;
            }
            used += n;
            chunk.end = piece_end;
            ++next_piece;
        }
        chunks.push_back(chunk);
    }
    return chunks;
}

}  // namespace llama_pool
