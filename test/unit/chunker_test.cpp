#include "workloads/chunker.hpp"

#include <catch2/catch.hpp>
#include <random>
#include <string>
#include <vector>

using namespace llama_pool;

namespace {

std::string part(std::string_view text, std::size_t b, std::size_t e) {
    return std::string(text.substr(b, e - b));
}

bool on_char_boundary(std::string_view text, std::size_t pos) {
    return pos == text.size() || (static_cast<unsigned char>(text[pos]) & 0xC0) != 0x80;
}

bool is_space(char c) {
    return c == ' ' || c == '\n' || c == '\t' || c == '\r';
}

bool starts_word_or_sentence(std::string_view text, std::size_t pos) {
    if (pos == 0 || is_space(text[pos - 1])) {
        return true;
    }
    // After a sentence mark or a closing mark (CJK sentences need no space after them).
    for (const std::string_view mark :
         {".", "!", "?", "\"", "'", ")", "]", "\xE3\x80\x82", "\xEF\xBC\x81", "\xEF\xBC\x9F",
          "\xE2\x80\x9D", "\xE2\x80\xA6"}) {
        if (text.substr(0, pos).ends_with(mark)) {
            return true;
        }
    }
    return false;
}

// Every invariant the summarizer relies on; a failure names the chunk.
void check_invariants(std::string_view text, const ChunkerOptions& options,
                      const std::vector<Chunk>& chunks, bool valid_utf8) {
    const auto overlap = std::min(options.overlap, options.max_chars / 2);
    if (text.empty()) {
        REQUIRE(chunks.empty());
        return;
    }
    REQUIRE(!chunks.empty());
    std::string rebuilt;
    for (std::size_t i = 0; i < chunks.size(); ++i) {
        INFO("chunk " << i << " of " << chunks.size());
        const auto& c = chunks[i];
        REQUIRE(c.begin <= c.fresh_begin);
        REQUIRE(c.fresh_begin < c.end);  // every chunk brings new text
        REQUIRE(c.end <= text.size());
        // Nothing lost or reordered: fresh parts tile the text.
        REQUIRE(c.fresh_begin == rebuilt.size());
        rebuilt += part(text, c.fresh_begin, c.end);
        // Bounds held, overlap included.
        CHECK(count_chars(text.substr(c.begin, c.end - c.begin)) <= options.max_chars);
        // Overlap as configured: at most `overlap` characters, all from the previous chunk's
        // own new text.
        CHECK(count_chars(text.substr(c.begin, c.fresh_begin - c.begin)) <= overlap);
        if (i == 0) {
            CHECK(c.begin == 0);
        } else {
            CHECK(c.begin >= chunks[i - 1].fresh_begin);
            // When the previous chunk has a word start within reach, the overlap is used.
            const auto& prev = chunks[i - 1];
            bool reachable = false;
            for (std::size_t p = prev.fresh_begin + 1; p < prev.end; ++p) {
                if (!is_space(text[p]) && is_space(text[p - 1]) &&
                    count_chars(text.substr(p, prev.end - p)) <= overlap) {
                    reachable = true;
                    break;
                }
            }
            if (valid_utf8 && reachable) {
                CHECK(c.begin < c.fresh_begin);
            }
            if (valid_utf8 && c.begin < c.fresh_begin) {
                // The overlap starts at a word or a sentence: never mid-word.
                CHECK(starts_word_or_sentence(text, c.begin));
            }
        }
        if (valid_utf8) {
            CHECK(on_char_boundary(text, c.begin));
            CHECK(on_char_boundary(text, c.fresh_begin));
            CHECK(on_char_boundary(text, c.end));
        }
    }
    REQUIRE(rebuilt == text);
}

}  // namespace

TEST_CASE("count_chars counts code points", "[chunker]") {
    CHECK(count_chars("") == 0);
    CHECK(count_chars("abc") == 3);
    CHECK(count_chars("\xC3\xA9t\xC3\xA9") == 3);         // été
    CHECK(count_chars("\xE6\x97\xA5\xE6\x9C\xAC") == 2);  // 日本
    CHECK(count_chars("\xF0\x9F\x98\x80") == 1);          // an emoji
}

TEST_CASE("a short text is one chunk, an empty one none", "[chunker]") {
    CHECK(chunk_text("", {}).empty());
    const auto chunks = chunk_text("One sentence. Two.", {100, 20});
    REQUIRE(chunks.size() == 1);
    CHECK(chunks[0].begin == 0);
    CHECK(chunks[0].end == 18);
}

TEST_CASE("chunks end at sentence ends and overlap by whole sentences", "[chunker]") {
    const std::string text =
        "Alpha beta gamma. Delta epsilon zeta. Eta theta iota. Kappa lambda mu.";
    const auto chunks = chunk_text(text, {40, 20});
    check_invariants(text, {40, 20}, chunks, true);
    REQUIRE(chunks.size() == 3);
    CHECK(part(text, chunks[0].begin, chunks[0].end) == "Alpha beta gamma. Delta epsilon zeta. ");
    // The second chunk repeats the last sentence that fits in 20 characters.
    CHECK(part(text, chunks[1].begin, chunks[1].fresh_begin) == "Delta epsilon zeta. ");
    CHECK(part(text, chunks[1].fresh_begin, chunks[1].end) == "Eta theta iota. ");
}

TEST_CASE("text after the last punctuation and text without any is kept", "[chunker]") {
    const std::string tail = "First sentence here. and then words that never end with a stop";
    check_invariants(tail, {30, 10}, chunk_text(tail, {30, 10}), true);
    const std::string none(5000, 'x');
    const auto chunks = chunk_text(none, {1000, 100});
    check_invariants(none, {1000, 100}, chunks, true);
    CHECK(chunks.size() >= 5);
}

TEST_CASE("a very long sentence is cut at word boundaries", "[chunker]") {
    std::string text;
    for (int i = 0; i < 400; ++i) {
        text += "word" + std::to_string(i) + " ";
    }
    const ChunkerOptions options{300, 40};
    const auto chunks = chunk_text(text, options);
    check_invariants(text, options, chunks, true);
    for (const auto& c : chunks) {
        // Each cut falls right after a space.
        CHECK((c.end == text.size() || text[c.end - 1] == ' '));
    }
}

TEST_CASE("other scripts: sentence marks without spaces, multibyte text", "[chunker]") {
    // Japanese ends sentences with 。 and puts no space after it.
    std::string ja;
    for (int i = 0; i < 60; ++i) {
        ja +=
            "\xE4\xBB\x8A\xE6\x97\xA5\xE3\x81\xAF\xE6\x99\xB4\xE3\x82\x8C\xE3\x80\x82";  // 今日は晴れ。
    }
    const ChunkerOptions options{50, 12};
    const auto chunks = chunk_text(ja, options);
    check_invariants(ja, options, chunks, true);
    for (std::size_t i = 0; i + 1 < chunks.size(); ++i) {
        CHECK(part(ja, chunks[i].end - 3, chunks[i].end) == "\xE3\x80\x82");  // ends with 。
    }
    // Cyrillic and Greek with ASCII punctuation.
    const std::string ru =
        "\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82 \xD0\xBC\xD0\xB8\xD1\x80. "
        "\xCE\x93\xCE\xB5\xCE\xB9\xCE\xAC \xCF\x83\xCE\xBF\xCF\x85! ";
    std::string many;
    for (int i = 0; i < 50; ++i) {
        many += ru;
    }
    check_invariants(many, {64, 16}, chunk_text(many, {64, 16}), true);
}

TEST_CASE("decimals and file names are not sentence ends", "[chunker]") {
    const std::string text = "Pi is 3.14159 and the file is notes.txt in the folder. Next one.";
    const auto chunks = chunk_text(text, {56, 0});
    REQUIRE(chunks.size() == 2);
    CHECK(part(text, chunks[0].begin, chunks[0].end) ==
          "Pi is 3.14159 and the file is notes.txt in the folder. ");
}

TEST_CASE("overlap is clamped to half a chunk and zero overlap means none", "[chunker]") {
    std::string text;
    for (int i = 0; i < 100; ++i) {
        text += "Sentence number " + std::to_string(i) + " is here. ";
    }
    for (const ChunkerOptions options : {ChunkerOptions{200, 0}, ChunkerOptions{200, 5000}}) {
        const auto chunks = chunk_text(text, options);
        check_invariants(text, options, chunks, true);
        if (options.overlap == 0) {
            for (const auto& c : chunks) {
                CHECK(c.begin == c.fresh_begin);
            }
        }
    }
}

TEST_CASE("property: random texts keep every invariant", "[chunker][property]") {
    std::mt19937 rng(12345);
    // Pieces chosen to hit the edges: punctuation runs, closers, blank lines, multibyte
    // characters, CJK marks, long words, whitespace runs.
    const std::vector<std::string> alphabet = {
        "a",
        "b",
        "word",
        "longerword",
        " ",
        " ",
        "  ",
        "\n",
        "\n\n",
        ".",
        "!",
        "?",
        "...",
        "?!",
        "\"",
        ")",
        "3.5",
        "\xC3\xA9",
        "\xE6\x97\xA5",
        "\xE3\x80\x82",
        "\xF0\x9F\x98\x80",
        "\xE2\x80\x9D",
        "\t",
        "e.g.",
    };
    for (int round = 0; round < 400; ++round) {
        std::string text;
        const auto pieces = std::uniform_int_distribution<int>(0, 400)(rng);
        for (int i = 0; i < pieces; ++i) {
            text +=
                alphabet[std::uniform_int_distribution<std::size_t>(0, alphabet.size() - 1)(rng)];
        }
        ChunkerOptions options;
        options.max_chars = std::uniform_int_distribution<std::size_t>(2, 300)(rng);
        options.overlap = std::uniform_int_distribution<std::size_t>(0, 200)(rng);
        INFO("round " << round << " max " << options.max_chars << " overlap " << options.overlap);
        check_invariants(text, options, chunk_text(text, options), true);
    }
}

TEST_CASE("property: arbitrary bytes are never lost", "[chunker][property]") {
    std::mt19937 rng(777);
    for (int round = 0; round < 300; ++round) {
        std::string text(std::uniform_int_distribution<std::size_t>(0, 600)(rng), '\0');
        for (auto& c : text) {
            c = static_cast<char>(std::uniform_int_distribution<int>(0, 255)(rng));
        }
        ChunkerOptions options;
        options.max_chars = std::uniform_int_distribution<std::size_t>(2, 120)(rng);
        options.overlap = std::uniform_int_distribution<std::size_t>(0, 80)(rng);
        INFO("round " << round);
        check_invariants(text, options, chunk_text(text, options), false);
    }
}
