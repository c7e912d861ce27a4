// The Prometheus text reader and the merger behind GET /metrics: every scrape parses each
// worker's /metrics reply and re-exports them as one exposition. A worker's text must never
// crash the pool, and whatever it says, the merged output must be one valid exposition
// (Prometheus refuses a whole scrape over one bad line, a family declared twice or a label
// value that is not UTF-8).

#include <algorithm>
#include <cstdint>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/prometheus_text.hpp"
#include "proxy/pool_metrics.hpp"
#include "test/fuzz/fuzz_support.hpp"

using namespace llama_pool;

namespace {

bool is_valid_utf8(std::string_view s) {
    std::size_t i = 0;
    while (i < s.size()) {
        const auto b0 = static_cast<unsigned char>(s[i]);
        std::size_t n = 0;
        unsigned char lo = 0x80, hi = 0xBF;
        if (b0 < 0x80) {
            n = 1;
        } else if (b0 >= 0xC2 && b0 <= 0xDF) {
            n = 2;
        } else if (b0 >= 0xE0 && b0 <= 0xEF) {
            n = 3;
            lo = b0 == 0xE0 ? 0xA0 : 0x80;
            hi = b0 == 0xED ? 0x9F : 0xBF;
        } else if (b0 >= 0xF0 && b0 <= 0xF4) {
            n = 4;
            lo = b0 == 0xF0 ? 0x90 : 0x80;
            hi = b0 == 0xF4 ? 0x8F : 0xBF;
        } else {
            return false;
        }
        if (i + n > s.size()) {
            return false;
        }
        for (std::size_t k = 1; k < n; ++k) {
            const auto b = static_cast<unsigned char>(s[i + k]);
            if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) {
                return false;
            }
        }
        i += n;
    }
    return true;
}

bool ends_with(std::string_view s, std::string_view suffix) {
    return s.size() > suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// What the reader promises about what it returns.
void check_families(const std::vector<ExpositionFamily>& families) {
    std::set<std::string_view> names;
    for (const auto& family : families) {
        FUZZ_CHECK(is_valid_metric_name(family.name));
        FUZZ_CHECK(names.insert(family.name).second);
        FUZZ_CHECK(family.type.empty() || family.type == "counter" || family.type == "gauge" ||
                   family.type == "histogram" || family.type == "summary" ||
                   family.type == "untyped");
        for (const auto& sample : family.samples) {
            FUZZ_CHECK(is_valid_metric_name(sample.name));
            FUZZ_CHECK(sample.name.rfind(family.name, 0) == 0);
            if (family.type == "histogram") {
                FUZZ_CHECK(ends_with(sample.name, "_bucket") || ends_with(sample.name, "_sum") ||
                           ends_with(sample.name, "_count"));
            }
            std::set<std::string_view> label_names;
            for (const auto& [name, value] : sample.labels) {
                FUZZ_CHECK(is_valid_label_name(name));
                FUZZ_CHECK(label_names.insert(name).second);
            }
        }
    }
}

std::size_t sample_count(const std::vector<ExpositionFamily>& families) {
    std::size_t n = 0;
    for (const auto& family : families) {
        n += family.samples.size();
    }
    return n;
}

// A rendered exposition: UTF-8, HELP and TYPE at most once per family, every other line a
// sample the reader accepts again, and reading then writing it changes nothing.
void check_rendered(const std::string& out) {
    FUZZ_CHECK(is_valid_utf8(out));
    FUZZ_CHECK(out.empty() || out.back() == '\n');
    std::set<std::string> helps;
    std::set<std::string> types;
    std::size_t sample_lines = 0;
    std::string_view rest = out;
    while (!rest.empty()) {
        const auto eol = rest.find('\n');
        const auto line = rest.substr(0, eol);
        rest.remove_prefix(eol + 1);
        FUZZ_CHECK(!line.empty());
        if (line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0) {
            auto tail = line.substr(7);
            const auto name = std::string(tail.substr(0, tail.find(' ')));
            FUZZ_CHECK(is_valid_metric_name(name));
            FUZZ_CHECK((line[2] == 'H' ? helps : types).insert(name).second);
        } else {
            FUZZ_CHECK(line.front() != '#');
            ++sample_lines;
        }
    }
    const auto reread = parse_exposition(out);
    check_families(reread);
    FUZZ_CHECK(sample_count(reread) == sample_lines);
    std::string again;
    append_exposition(again, reread);
    FUZZ_CHECK(again == out);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto input = fuzz::as_text(data, size);
    const auto families = parse_exposition(input);
    check_families(families);

    std::string written;
    append_exposition(written, families);
    check_rendered(written);

    // Two workers: the input cut in two at a line boundary, and the whole input again, as
    // PoolMetrics::render_worker_metrics merges them (colons renamed to underscores).
    auto cut = fuzz::split_point(input, 1);
    cut = std::min(input.size(), input.find('\n', cut) == std::string_view::npos
                                     ? input.size()
                                     : input.find('\n', cut) + 1);
    check_rendered(merge_worker_expositions({{"0", std::string(input.substr(0, cut))},
                                             {"1", std::string(input.substr(cut))},
                                             {"w\"2\n\xff", std::string(input)}}));

    check_rendered(relabel_exposition(input, "worker", "0"));
    return 0;
}
