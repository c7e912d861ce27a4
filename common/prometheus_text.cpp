#include "common/prometheus_text.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <iterator>
#include <stdexcept>

namespace llama_pool {

namespace {

bool is_name_start(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

bool is_digit(char c) {
    return c >= '0' && c <= '9';
}

bool is_metric_name_char(char c) {
    return is_name_start(c) || is_digit(c) || c == ':';
}

bool is_label_name_char(char c) {
    return is_name_start(c) || is_digit(c);
}

bool is_blank(char c) {
    return c == ' ' || c == '\t';
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (is_blank(s.front()) || s.front() == '\r')) {
        s.remove_prefix(1);
    }
    while (!s.empty() && (is_blank(s.back()) || s.back() == '\r')) {
        s.remove_suffix(1);
    }
    return s;
}

void skip_blanks(std::string_view& s) {
    while (!s.empty() && is_blank(s.front())) {
        s.remove_prefix(1);
    }
}

// Splits off the leading run of non-blank characters.
std::string_view take_token(std::string_view& s) {
    std::size_t n = 0;
    while (n < s.size() && !is_blank(s[n])) {
        ++n;
    }
    const auto token = s.substr(0, n);
    s.remove_prefix(n);
    return token;
}

bool equals_ignoring_case(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               const auto lower = [](char c) { return (c >= 'A' && c <= 'Z') ? c - 'A' + 'a' : c; };
               return lower(x) == lower(y);
           });
}

// Accepts what Prometheus' own reader (Go's ParseFloat) accepts in practice: decimal and
// exponent notation with an optional sign, and Inf/Infinity/NaN in any case.
std::optional<double> parse_value(std::string_view s) {
    bool negative = false;
    if (!s.empty() && (s.front() == '+' || s.front() == '-')) {
        negative = s.front() == '-';
        s.remove_prefix(1);
    }
    if (s.empty()) {
        return std::nullopt;
    }
    if (equals_ignoring_case(s, "inf") || equals_ignoring_case(s, "infinity")) {
        return negative ? -HUGE_VAL : HUGE_VAL;
    }
    if (equals_ignoring_case(s, "nan")) {
        return std::nan("");
    }
    if (!(is_digit(s.front()) || s.front() == '.')) {
        return std::nullopt;
    }
    double v = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || end != s.data() + s.size()) {
        return std::nullopt;
    }
    return negative ? -v : v;
}

std::optional<std::int64_t> parse_timestamp(std::string_view s) {
    std::int64_t v = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (s.empty() || ec != std::errc() || end != s.data() + s.size()) {
        return std::nullopt;
    }
    return v;
}

// Label values know three escapes. Any other backslash is kept as written: dropping the line
// for it would lose a whole sample over a cosmetic difference.
std::string unescape(std::string_view s, bool quotes) {
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\\' && i + 1 < s.size()) {
            const char next = s[i + 1];
            if (next == '\\' || next == 'n' || (quotes && next == '"')) {
                out += next == 'n' ? '\n' : next;
                ++i;
                continue;
            }
        }
        out += s[i];
    }
    return out;
}

using Labels = std::vector<std::pair<std::string, std::string>>;

bool has_duplicate_names(const Labels& labels) {
    if (labels.size() < 2) {
        return false;
    }
    std::vector<std::string_view> names;
    names.reserve(labels.size());
    for (const auto& [name, value] : labels) {
        names.push_back(name);
    }
    std::sort(names.begin(), names.end());
    return std::adjacent_find(names.begin(), names.end()) != names.end();
}

// Parses `{a="x",b="y"}` (the opening brace already consumed) up to and including the
// closing brace. Returns false on anything malformed.
bool parse_labels(std::string_view& s, Labels& labels) {
    for (;;) {
        skip_blanks(s);
        if (s.empty()) {
            return false;
        }
        if (s.front() == '}') {
            s.remove_prefix(1);
            return !has_duplicate_names(labels);
        }
        std::size_t n = 0;
        while (n < s.size() && is_label_name_char(s[n])) {
            ++n;
        }
        const auto name = s.substr(0, n);
        if (!is_valid_label_name(name)) {
            return false;
        }
        s.remove_prefix(n);
        skip_blanks(s);
        if (s.empty() || s.front() != '=') {
            return false;
        }
        s.remove_prefix(1);
        skip_blanks(s);
        if (s.empty() || s.front() != '"') {
            return false;
        }
        s.remove_prefix(1);
        std::size_t end = 0;
        while (end < s.size() && s[end] != '"') {
            end += s[end] == '\\' ? 2 : 1;
        }
        if (end >= s.size()) {
            return false;
        }
        labels.emplace_back(std::string(name), unescape(s.substr(0, end), true));
        s.remove_prefix(end + 1);
        skip_blanks(s);
        if (s.empty()) {
            return false;
        }
        if (s.front() == ',') {
            s.remove_prefix(1);
        } else if (s.front() != '}') {
            return false;
        }
    }
}

std::optional<ExpositionSample> parse_sample(std::string_view line) {
    ExpositionSample sample;
    std::size_t n = 0;
    while (n < line.size() && is_metric_name_char(line[n])) {
        ++n;
    }
    if (!is_valid_metric_name(line.substr(0, n))) {
        return std::nullopt;
    }
    sample.name = std::string(line.substr(0, n));
    line.remove_prefix(n);
    // Without a label set, a blank must end the name: `foo-1` is not `foo -1`.
    const bool blank_after_name = !line.empty() && is_blank(line.front());
    skip_blanks(line);
    if (!line.empty() && line.front() == '{') {
        line.remove_prefix(1);
        if (!parse_labels(line, sample.labels)) {
            return std::nullopt;
        }
        skip_blanks(line);
    } else if (!blank_after_name) {
        return std::nullopt;
    }
    const auto value = parse_value(take_token(line));
    if (!value) {
        return std::nullopt;
    }
    sample.value = *value;
    skip_blanks(line);
    if (!line.empty()) {
        sample.timestamp_ms = parse_timestamp(take_token(line));
        skip_blanks(line);
        if (!sample.timestamp_ms || !line.empty()) {
            return std::nullopt;
        }
    }
    return sample;
}

bool is_known_type(std::string_view type) {
    return type == "counter" || type == "gauge" || type == "histogram" || type == "summary" ||
           type == "untyped";
}

bool has_label(const Labels& labels, std::string_view name) {
    return std::any_of(labels.begin(), labels.end(),
                       [&](const auto& label) { return label.first == name; });
}

// Prometheus reads `le` and `quantile` as numbers and rejects the whole scrape when one is
// not, so a sample whose bound is not a number cannot be passed on.
bool has_numeric_label(const Labels& labels, std::string_view name) {
    return std::any_of(labels.begin(), labels.end(), [&](const auto& label) {
        return label.first == name && parse_value(label.second).has_value();
    });
}

// Length of the well-formed UTF-8 sequence at the start of `s` (RFC 3629: no overlong
// forms, no surrogates, nothing above U+10FFFF), or 0 when there is none.
std::size_t utf8_sequence_length(std::string_view s) {
    const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
    const unsigned char b0 = byte(0);
    if (b0 < 0x80) {
        return 1;
    }
    std::size_t n = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (b0 >= 0xC2 && b0 <= 0xDF) {
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
        return 0;
    }
    if (s.size() < n || byte(1) < lo || byte(1) > hi) {
        return 0;
    }
    for (std::size_t i = 2; i < n; ++i) {
        if (byte(i) < 0x80 || byte(i) > 0xBF) {
            return 0;
        }
    }
    return n;
}

// Escapes `text` for a HELP line (quotes = false) or a label value (quotes = true). Bytes
// that are not UTF-8 become U+FFFD: Prometheus rejects a whole scrape over one invalid label
// value, and label values can come from outside (request paths, a worker's text).
void append_escaped(std::string& out, std::string_view text, bool quotes) {
    while (!text.empty()) {
        const char c = text.front();
        const auto n = utf8_sequence_length(text);
        if (n == 0) {
            out += "\xEF\xBF\xBD";
            text.remove_prefix(1);
            continue;
        }
        if (c == '\\') {
            out += "\\\\";
        } else if (c == '\n') {
            out += "\\n";
        } else if (quotes && c == '"') {
            out += "\\\"";
        } else {
            out.append(text.substr(0, n));
        }
        text.remove_prefix(n);
    }
}

bool ends_with(std::string_view s, std::string_view suffix) {
    return s.size() > suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// Builds families from lines, keeping an index so that each line costs one lookup.
class FamilyBuilder {
  public:
    void help(std::string_view name, std::string_view text) {
        auto& family = get_or_create(name);
        if (!family.help) {
            family.help = unescape(text, false);
        }
    }

    void type(std::string_view name, std::string_view type) {
        auto& family = get_or_create(name);
        // The format wants TYPE before the family's first sample; a late one would retype
        // samples that were read without it.
        if (family.type.empty() && family.samples.empty()) {
            family.type = std::string(type);
        }
    }

    void sample(ExpositionSample sample) {
        if (auto* family = family_for(sample)) {
            family->samples.push_back(std::move(sample));
        }
    }

    std::vector<ExpositionFamily> take() { return std::move(families_); }

  private:
    ExpositionFamily& get_or_create(std::string_view name) {
        const auto [it, inserted] = index_.try_emplace(std::string(name), families_.size());
        if (inserted) {
            families_.push_back(ExpositionFamily{std::string(name), std::nullopt, {}, {}});
        }
        return families_[it->second];
    }

    ExpositionFamily* find(std::string_view name) {
        const auto it = index_.find(std::string(name));
        return it == index_.end() ? nullptr : &families_[it->second];
    }

    // The family a sample belongs to, or null when it does not fit the declared type.
    ExpositionFamily* family_for(const ExpositionSample& sample) {
        const std::string_view name = sample.name;
        if (auto* family = find(name)) {
            if (family->type == "histogram") {
                return nullptr;  // a histogram has only _bucket, _sum and _count samples
            }
            if (family->type == "summary" && !has_numeric_label(sample.labels, "quantile")) {
                return nullptr;
            }
            return family;
        }
        for (const std::string_view suffix : {"_bucket", "_sum", "_count"}) {
            if (!ends_with(name, suffix)) {
                continue;
            }
            auto* family = find(name.substr(0, name.size() - suffix.size()));
            if (family == nullptr) {
                continue;
            }
            if (family->type == "histogram") {
                if (suffix == "_bucket" && !has_numeric_label(sample.labels, "le")) {
                    return nullptr;
                }
                return family;
            }
            if (family->type == "summary" && suffix != "_bucket") {
                return family;
            }
        }
        return &get_or_create(name);
    }

    std::vector<ExpositionFamily> families_;
    std::unordered_map<std::string, std::size_t> index_;
};

void parse_comment(std::string_view line, FamilyBuilder& builder) {
    line.remove_prefix(1);  // '#'
    skip_blanks(line);
    const auto keyword = take_token(line);
    if (keyword != "HELP" && keyword != "TYPE") {
        return;  // a plain comment
    }
    skip_blanks(line);
    const auto name = take_token(line);
    if (!is_valid_metric_name(name)) {
        return;
    }
    skip_blanks(line);
    if (keyword == "HELP") {
        builder.help(name, line);
    } else if (is_known_type(line)) {
        builder.type(name, line);
    }
}

void append_sample(std::string& out, const ExpositionSample& sample) {
    out += sample.name;
    if (!sample.labels.empty()) {
        out += '{';
        bool first = true;
        for (const auto& [name, value] : sample.labels) {
            if (!first) {
                out += ',';
            }
            first = false;
            out += name;
            out += "=\"";
            append_escaped_label_value(out, value);
            out += '"';
        }
        out += '}';
    }
    out += ' ';
    append_metric_value(out, sample.value);
    if (sample.timestamp_ms) {
        fmt::format_to(std::back_inserter(out), " {}", *sample.timestamp_ms);
    }
    out += '\n';
}

std::string_view effective_type(const ExpositionFamily& family) {
    return family.type.empty() ? std::string_view("untyped") : std::string_view(family.type);
}

}  // namespace

bool is_valid_metric_name(std::string_view name) {
    if (name.empty() || !(is_name_start(name.front()) || name.front() == ':')) {
        return false;
    }
    return std::all_of(name.begin(), name.end(), is_metric_name_char);
}

bool is_valid_label_name(std::string_view name) {
    if (name.empty() || !is_name_start(name.front()) || name.substr(0, 2) == "__") {
        return false;
    }
    return std::all_of(name.begin(), name.end(), is_label_name_char);
}

void append_metric_value(std::string& out, double value) {
    if (std::isnan(value)) {
        out += "NaN";
    } else if (std::isinf(value)) {
        out += value > 0 ? "+Inf" : "-Inf";
    } else if (value == std::trunc(value) && std::fabs(value) <= 9007199254740992.0) {
        // Every integer up to 2^53 is exact in a double: print it the way a person would.
        fmt::format_to(std::back_inserter(out), "{}", static_cast<std::int64_t>(value));
    } else {
        fmt::format_to(std::back_inserter(out), "{}", value);
    }
}

std::string format_metric_value(double value) {
    std::string out;
    append_metric_value(out, value);
    return out;
}

void append_escaped_help(std::string& out, std::string_view help) {
    append_escaped(out, help, false);
}

void append_escaped_label_value(std::string& out, std::string_view value) {
    append_escaped(out, value, true);
}

std::string valid_utf8(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    while (!text.empty()) {
        const auto n = utf8_sequence_length(text);
        if (n == 0) {
            out += "\xEF\xBF\xBD";
            text.remove_prefix(1);
            continue;
        }
        out.append(text.substr(0, n));
        text.remove_prefix(n);
    }
    return out;
}

std::vector<ExpositionFamily> parse_exposition(std::string_view text) {
    FamilyBuilder builder;
    while (!text.empty()) {
        const auto eol = text.find('\n');
        const auto line = trim(text.substr(0, eol));
        text.remove_prefix(eol == std::string_view::npos ? text.size() : eol + 1);
        if (line.empty()) {
            continue;
        }
        if (line.front() == '#') {
            parse_comment(line, builder);
        } else if (auto sample = parse_sample(line)) {
            builder.sample(std::move(*sample));
        }
    }
    return builder.take();
}

void append_exposition(std::string& out, const std::vector<ExpositionFamily>& families) {
    // Prometheus reads a sample named `x_count` as part of histogram or summary `x` when it
    // knows `x`, wherever the sample stands, so a family of that name (say untyped, from a
    // source whose TYPE line was garbled) would corrupt `x` or be refused as a second TYPE.
    std::unordered_map<std::string_view, std::string_view> bucketed;  // name -> type
    for (const auto& family : families) {
        if (family.type == "histogram" || family.type == "summary") {
            bucketed.emplace(family.name, family.type);
        }
    }
    const auto shadowed = [&](std::string_view name) {
        for (const std::string_view suffix : {"_bucket", "_sum", "_count"}) {
            if (!ends_with(name, suffix)) {
                continue;
            }
            const auto it = bucketed.find(name.substr(0, name.size() - suffix.size()));
            if (it != bucketed.end() && (it->second == "histogram" || suffix != "_bucket")) {
                return true;
            }
        }
        return false;
    };
    for (const auto& family : families) {
        if (!bucketed.empty() && shadowed(family.name)) {
            continue;
        }
        if (family.help) {
            out += "# HELP ";
            out += family.name;
            out += ' ';
            append_escaped_help(out, *family.help);
            out += '\n';
        }
        if (!family.type.empty()) {
            out += "# TYPE ";
            out += family.name;
            out += ' ';
            out += family.type;
            out += '\n';
        }
        for (const auto& sample : family.samples) {
            append_sample(out, sample);
        }
    }
}

ExpositionMerger::ExpositionMerger(std::string label_name, FamilyRenamer rename)
    : label_name_(std::move(label_name)), rename_(std::move(rename)) {
    if (!is_valid_label_name(label_name_)) {
        throw std::invalid_argument("invalid label name: " + label_name_);
    }
    if (label_name_ == "le" || label_name_ == "quantile") {
        // Renaming the sources' own `le` or `quantile` would break their histograms.
        throw std::invalid_argument("label name reserved for buckets: " + label_name_);
    }
}

void ExpositionMerger::add(std::string_view label_value, std::string_view text,
                           const std::vector<std::pair<std::string, std::string>>& extra) {
    for (auto& family : parse_exposition(text)) {
        if (rename_) {
            auto name = rename_(family.name);
            if (!is_valid_metric_name(name)) {
                continue;
            }
            // The reader put only the family's name plus a suffix into its samples' names.
            for (auto& sample : family.samples) {
                sample.name = name + sample.name.substr(family.name.size());
            }
            family.name = std::move(name);
        }
        for (auto& sample : family.samples) {
            auto& labels = sample.labels;
            auto put = [&labels](const std::string& name, std::string_view value, std::size_t at) {
                // Keep the source's own label of that name, renamed, as Prometheus does on
                // scrape.
                auto it = std::find_if(labels.begin(), labels.end(),
                                       [&](const auto& label) { return label.first == name; });
                if (it != labels.end()) {
                    std::string renamed = "exported_" + name;
                    while (has_label(labels, renamed)) {
                        renamed.insert(0, "exported_");
                    }
                    it->first = std::move(renamed);
                }
                labels.insert(labels.begin() + static_cast<std::ptrdiff_t>(at),
                              {name, std::string(value)});
            };
            put(label_name_, label_value, 0);
            for (std::size_t i = 0; i < extra.size(); ++i) {
                put(extra[i].first, extra[i].second, i);
            }
        }

        const auto [it, inserted] = index_.try_emplace(family.name, families_.size());
        if (inserted) {
            families_.push_back(std::move(family));
            continue;
        }
        auto& merged = families_[it->second];
        if (merged.type.empty() && merged.samples.empty()) {
            merged.type = family.type;
        }
        if (!merged.help) {
            merged.help = std::move(family.help);
        }
        if (effective_type(merged) != effective_type(family)) {
            continue;
        }
        std::move(family.samples.begin(), family.samples.end(), std::back_inserter(merged.samples));
    }
}

void ExpositionMerger::append_to(std::string& out) const {
    append_exposition(out, families_);
}

std::string ExpositionMerger::render() const {
    std::string out;
    append_to(out);
    return out;
}

std::string relabel_exposition(std::string_view text, std::string_view label_name,
                               std::string_view label_value) {
    ExpositionMerger merger{std::string(label_name)};
    merger.add(label_value, text);
    return merger.render();
}

std::string merge_expositions(std::string_view label_name,
                              const std::vector<std::pair<std::string, std::string>>& sources,
                              ExpositionMerger::FamilyRenamer rename) {
    ExpositionMerger merger{std::string(label_name), std::move(rename)};
    for (const auto& [label_value, text] : sources) {
        merger.add(label_value, text);
    }
    return merger.render();
}

}  // namespace llama_pool
