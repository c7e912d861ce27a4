#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

// Prometheus text exposition format 0.0.4, the part prometheus-cpp does not do: a tolerant
// reader for the text llama-server's /metrics returns, and the relabel/merge needed to
// re-export several workers' metrics as one valid exposition, with the few writing
// primitives that needs. The pool's own families are serialized by prometheus-cpp (see
// common/metrics.hpp).
//
// Everything here is pure: no I/O, no global state.

namespace llama_pool {

// [a-zA-Z_:][a-zA-Z0-9_:]*
bool is_valid_metric_name(std::string_view name);
// [a-zA-Z_][a-zA-Z0-9_]*, and not starting with "__" (reserved for Prometheus itself).
bool is_valid_label_name(std::string_view name);

// Integers that a double holds exactly print as integers ("3", not "3.0" or "3e+00"); other
// finite values print with the fewest digits that round-trip; infinities and NaN print as
// "+Inf", "-Inf" and "NaN".
void append_metric_value(std::string& out, double value);
std::string format_metric_value(double value);

// HELP text: backslash and newline are escaped. Both functions write valid UTF-8: bytes that
// are not become U+FFFD, because Prometheus rejects a whole scrape over one invalid label
// value, and label values may come from outside (a request path, a worker's text).
void append_escaped_help(std::string& out, std::string_view help);
// Label values: backslash, double quote and newline are escaped.
void append_escaped_label_value(std::string& out, std::string_view value);
// `text` with every byte that is not part of well-formed UTF-8 replaced by U+FFFD, and
// nothing escaped (for values handed to prometheus-cpp, which escapes but does not check).
std::string valid_utf8(std::string_view text);

// One sample as read from an exposition. Label values are unescaped.
struct ExpositionSample {
    std::string name;  // the sample's own name, e.g. `foo_bucket` in histogram `foo`
    std::vector<std::pair<std::string, std::string>> labels;
    double value = 0;
    std::optional<std::int64_t> timestamp_ms;
};

// Everything one exposition says about one metric family. `help` and `type` are empty when
// the text had no HELP or TYPE line for the family; they are then left out on output too.
struct ExpositionFamily {
    std::string name;
    std::optional<std::string> help;  // unescaped
    std::string type;                 // counter, gauge, histogram, summary, untyped or empty
    std::vector<ExpositionSample> samples;
};

// Reads an exposition. Malformed lines (bad names, unterminated label sets, values that are
// not numbers, duplicate label names, TYPE lines with an unknown type, samples that do not
// fit their family's type, such as a histogram bucket without a numeric `le` or a summary
// quantile without a numeric `quantile`) are skipped, never fatal. Samples of one family are
// grouped even when the text interleaves them; families keep the order of their first appearance. A
// second HELP or TYPE line for a family is ignored.
std::vector<ExpositionFamily> parse_exposition(std::string_view text);

// Writes families back out: HELP and TYPE (where known) once per family, then its samples.
// A family named like another's histogram or summary samples (`x_count` beside histogram
// `x`) is left out: Prometheus would read its samples as part of `x`.
void append_exposition(std::string& out, const std::vector<ExpositionFamily>& families);

// Combines the metrics of several sources (workers) into one exposition in which every
// family appears once, with one HELP/TYPE header followed by every source's samples, each
// sample carrying an extra label naming its source. Prometheus and promtool reject a family
// whose header appears twice, which is what concatenating the workers' texts would produce.
//
//     ExpositionMerger merger("worker");
//     merger.add("0", text_of_worker_0);
//     merger.add("1", text_of_worker_1);
//     merger.append_to(out);
//
// A sample that already has a label of that name keeps its value under `exported_<name>`
// (what Prometheus does on scrape), so no series collide. When sources disagree on a
// family's type, the first source that declared one wins and the disagreeing source's
// samples of that family are dropped (mixing them would make the family invalid). The first
// HELP seen wins.
//
// An optional renamer maps each source family name to the name it is exported under (its
// samples follow: `a_bucket` becomes `b_bucket`); returning an empty or invalid name drops
// the family. llama-server's names (`llamacpp:...`) are valid but promtool's lint flags their
// colons, which is one reason to rename.
class ExpositionMerger {
  public:
    using FamilyRenamer = std::function<std::string(std::string_view family_name)>;

    // Throws std::invalid_argument when `label_name` is not a valid label name, or is `le`
    // or `quantile`.
    explicit ExpositionMerger(std::string label_name, FamilyRenamer rename = {});

    // `extra`: more labels put on every sample of this source, before the merger's own
    // (e.g. the worker's group).
    void add(std::string_view label_value, std::string_view text,
             const std::vector<std::pair<std::string, std::string>>& extra = {});

    void append_to(std::string& out) const;
    std::string render() const;

  private:
    std::string label_name_;
    FamilyRenamer rename_;
    std::vector<ExpositionFamily> families_;
    std::unordered_map<std::string, std::size_t> index_;  // family name -> families_
};

// One source's text with `label_name="label_value"` added to every sample; HELP and TYPE kept
// once per family. Throws std::invalid_argument when `label_name` is not a valid label name.
std::string relabel_exposition(std::string_view text, std::string_view label_name,
                               std::string_view label_value);

// The ExpositionMerger in one call: `sources` are (label value, text) pairs, in output order.
std::string merge_expositions(std::string_view label_name,
                              const std::vector<std::pair<std::string, std::string>>& sources,
                              ExpositionMerger::FamilyRenamer rename = {});

}  // namespace llama_pool
