#include "common/metrics.hpp"

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <future>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/process_metrics.hpp"
#include "common/prometheus_text.hpp"

using namespace llama_pool;

namespace {

// Family name -> (type, values of its samples by sample name and rendered label set).
struct ParsedView {
    std::map<std::string, std::string> types;
    std::map<std::string, int> help_count;
    std::map<std::string, double> values;  // "name{labels}" -> value
};

ParsedView view_of(const std::string& text) {
    ParsedView v;
    for (const auto& family : parse_exposition(text)) {
        v.types[family.name] = family.type;
        for (const auto& sample : family.samples) {
            std::string key = sample.name + "{";
            for (const auto& [name, value] : sample.labels) {
                key += name + "=" + value + ",";
            }
            v.values[key + "}"] = sample.value;
        }
    }
    return v;
}

int count_lines_starting_with(const std::string& text, const std::string& prefix) {
    int n = 0;
    std::size_t pos = 0;
    while (pos < text.size()) {
        const auto eol = text.find('\n', pos);
        const auto line =
            text.substr(pos, eol == std::string::npos ? std::string::npos : eol - pos);
        if (line.rfind(prefix, 0) == 0) {
            ++n;
        }
        pos = eol == std::string::npos ? text.size() : eol + 1;
    }
    return n;
}

}  // namespace

TEST_CASE("a labeled counter renders HELP, TYPE and escaped samples sorted by label values",
          "[metrics]") {
    MetricsRegistry registry;
    auto& family =
        registry.counter("llama_pool_requests_total", "Requests relayed.", {"path", "status"});
    family.labels({"a\\b\"c\nd", "200"}).inc(3);
    family.labels({"/completion", "200"}).inc();
    family.labels({"/completion", "200"}).inc(0.5);

    CHECK(registry.render() ==
          "# HELP llama_pool_requests_total Requests relayed.\n"
          "# TYPE llama_pool_requests_total counter\n"
          "llama_pool_requests_total{path=\"/completion\",status=\"200\"} 1.5\n"
          "llama_pool_requests_total{path=\"a\\\\b\\\"c\\nd\",status=\"200\"} 3\n");
}

TEST_CASE("help text that would break its line is refused", "[metrics]") {
    // prometheus-cpp 1.0 writes HELP unescaped.
    MetricsRegistry registry;
    CHECK_THROWS_AS(registry.counter("a_total", "two\nlines"), std::invalid_argument);
    CHECK_THROWS_AS(registry.gauge("b", "back\\slash"), std::invalid_argument);
}

TEST_CASE("labels render in declared order and children in a stable order", "[metrics]") {
    MetricsRegistry registry;
    auto& family = registry.gauge("llama_pool_slots", "Slots.", {"zone", "alpha"});
    family.labels({"b", "2"}).set(2);
    family.labels({"a", "9"}).set(1);
    family.labels({"b", "1"}).set(-3);

    const std::string expected =
        "# HELP llama_pool_slots Slots.\n"
        "# TYPE llama_pool_slots gauge\n"
        "llama_pool_slots{zone=\"a\",alpha=\"9\"} 1\n"
        "llama_pool_slots{zone=\"b\",alpha=\"1\"} -3\n"
        "llama_pool_slots{zone=\"b\",alpha=\"2\"} 2\n";
    CHECK(registry.render() == expected);
    CHECK(registry.render() == expected);
}

TEST_CASE("a label with an empty value is left out of its series", "[metrics]") {
    MetricsRegistry registry;
    auto& family = registry.counter("req_total", "h", {"group", "route"});
    family.labels({"", "/completion"}).inc();
    family.labels({"chat", "/completion"}).inc(2);
    family.labels({"", ""}).inc(3);
    CHECK(registry.render() ==
          "# HELP req_total h\n"
          "# TYPE req_total counter\n"
          "req_total 3\n"
          "req_total{route=\"/completion\"} 1\n"
          "req_total{group=\"chat\",route=\"/completion\"} 2\n");
}

TEST_CASE("families render in registration order, a labeled one with HELP and TYPE before use",
          "[metrics]") {
    MetricsRegistry registry;
    registry.histogram("lat_seconds", "Latency.", {"route"}, {1});
    registry.counter("retries_total", "Retries.", {"reason"});
    registry.gauge("up", "Up.").get().set(1);
    CHECK(registry.render() ==
          "# HELP lat_seconds Latency.\n# TYPE lat_seconds histogram\n"
          "# HELP retries_total Retries.\n# TYPE retries_total counter\n"
          "# HELP up Up.\n# TYPE up gauge\nup 1\n");
}

TEST_CASE("an unlabeled family shows 0 before use", "[metrics]") {
    MetricsRegistry registry;
    auto& up = registry.gauge("llama_pool_up", "Whether the pool is up.");
    registry.counter("llama_pool_restarts_total", "Restarts.");
    up.get().set(1);
    up.get().inc(2);
    up.get().dec(0.5);
    CHECK(up.get().value() == 2.5);
    const auto v = view_of(registry.render());
    CHECK(v.values.at("llama_pool_up{}") == 2.5);
    CHECK(v.values.at("llama_pool_restarts_total{}") == 0);
    CHECK(v.types.at("llama_pool_restarts_total") == "counter");
}

TEST_CASE("histogram buckets are cumulative and end with +Inf, with _sum and _count", "[metrics]") {
    MetricsRegistry registry;
    auto& family = registry.histogram("llama_pool_ttft_seconds", "Time to first token.", {"route"},
                                      {0.5, 1, 10});
    auto& h = family.labels({"/completion"});
    for (const double v : {0.25, 0.5, 0.75, 5.0, 100.0}) {
        h.observe(v);
    }
    const auto text = registry.render();
    CHECK(text.find("# TYPE llama_pool_ttft_seconds histogram\n") != std::string::npos);
    const auto v = view_of(text);
    CHECK(v.values.at("llama_pool_ttft_seconds_bucket{route=/completion,le=0.5,}") == 2);
    CHECK(v.values.at("llama_pool_ttft_seconds_bucket{route=/completion,le=1,}") == 3);
    CHECK(v.values.at("llama_pool_ttft_seconds_bucket{route=/completion,le=10,}") == 4);
    CHECK(v.values.at("llama_pool_ttft_seconds_bucket{route=/completion,le=+Inf,}") == 5);
    CHECK(v.values.at("llama_pool_ttft_seconds_sum{route=/completion,}") == 106.5);
    CHECK(v.values.at("llama_pool_ttft_seconds_count{route=/completion,}") == 5);

    const auto snap = h.snapshot();
    CHECK(snap.upper_bounds == std::vector<double>{0.5, 1, 10});
    CHECK(snap.cumulative_counts == std::vector<std::uint64_t>{2, 3, 4, 5});
    CHECK(snap.count == 5);
    CHECK(snap.sum == 106.5);
}

TEST_CASE("an unlabeled histogram has only le, NaN goes to +Inf, the +Inf bound is implicit",
          "[metrics]") {
    MetricsRegistry registry;
    auto& h = registry.histogram("x_seconds", "X.", {}, {1, HUGE_VAL}).get();
    h.observe(std::nan(""));
    h.observe(-5);
    CHECK(h.snapshot().upper_bounds == std::vector<double>{1});
    const auto v = view_of(registry.render());
    CHECK(v.values.at("x_seconds_bucket{le=1,}") == 1);
    CHECK(v.values.at("x_seconds_bucket{le=+Inf,}") == 2);
    CHECK(std::isnan(v.values.at("x_seconds_sum{}")));
    CHECK(v.values.at("x_seconds_count{}") == 2);
}

TEST_CASE("numbers print as integers when exact, shortest round-trip otherwise", "[metrics]") {
    CHECK(format_metric_value(3) == "3");
    CHECK(format_metric_value(-0.0) == "0");
    CHECK(format_metric_value(-42) == "-42");
    CHECK(format_metric_value(1234567890123) == "1234567890123");
    CHECK(format_metric_value(0.1) == "0.1");
    CHECK(format_metric_value(2.5e-7) == "2.5e-07");
    CHECK(format_metric_value(1e300) == "1e+300");
    CHECK(format_metric_value(HUGE_VAL) == "+Inf");
    CHECK(format_metric_value(-HUGE_VAL) == "-Inf");
    CHECK(format_metric_value(std::nan("")) == "NaN");
    const double third = 1.0 / 3;
    CHECK(std::stod(format_metric_value(third)) == third);
}

TEST_CASE("invalid metric and label names are rejected", "[metrics]") {
    MetricsRegistry registry;
    for (const char* bad : {"", "1abc", "a-b", "a b", "é", "a{"}) {
        INFO(bad);
        CHECK_THROWS_AS(registry.counter(bad, "h"), std::invalid_argument);
    }
    for (const char* bad : {"", "__reserved", "1a", "a:b", "a-b"}) {
        INFO(bad);
        CHECK_THROWS_AS(registry.gauge("g", "h", {bad}), std::invalid_argument);
    }
    CHECK_THROWS_AS(registry.gauge("g", "h", {"a", "a"}), std::invalid_argument);
    CHECK_THROWS_AS(registry.histogram("h", "h", {"le"}, {1}), std::invalid_argument);
    CHECK_THROWS_AS(registry.histogram("h", "h", {}, {2, 1}), std::invalid_argument);
    CHECK_THROWS_AS(registry.histogram("h", "h", {}, {1, 1}), std::invalid_argument);
    CHECK_THROWS_AS(registry.histogram("h", "h", {}, {std::nan("")}), std::invalid_argument);

    CHECK_NOTHROW(registry.counter("llamacpp:tokens_total", "h"));
    CHECK_NOTHROW(registry.counter(":leading_colon", "h", {"_under", "a1"}));
    // Nothing that failed above took its name.
    CHECK_NOTHROW(registry.gauge("g", "h"));
    CHECK_NOTHROW(registry.histogram("h", "h", {}, {1}));
}

TEST_CASE("a name is registered once, histogram sample names included", "[metrics]") {
    MetricsRegistry registry;
    registry.counter("a_total", "h");
    CHECK_THROWS_AS(registry.counter("a_total", "h"), std::invalid_argument);
    CHECK_THROWS_AS(registry.gauge("a_total", "h"), std::invalid_argument);
    registry.histogram("lat", "h", {}, {1});
    CHECK_THROWS_AS(registry.gauge("lat_count", "h"), std::invalid_argument);
    registry.gauge("other_sum", "h");
    CHECK_THROWS_AS(registry.histogram("other", "h", {}, {1}), std::invalid_argument);
}

TEST_CASE("a wrong number of label values is rejected, and children are stable references",
          "[metrics]") {
    MetricsRegistry registry;
    auto& family = registry.counter("c_total", "h", {"a", "b"});
    CHECK_THROWS_AS(family.labels({"x"}), std::invalid_argument);
    CHECK_THROWS_AS(family.labels({"x", "y", "z"}), std::invalid_argument);
    CHECK_THROWS_AS(family.get(), std::invalid_argument);
    auto& child = family.labels({"x", "y"});
    for (int i = 0; i < 100; ++i) {
        family.labels({"x", std::to_string(i)});
    }
    CHECK(&family.labels({"x", "y"}) == &child);

    auto& plain = registry.counter("d_total", "h");
    CHECK_THROWS_AS(plain.labels({"x"}), std::invalid_argument);
    CHECK(&plain.labels({}) == &plain.get());
}

TEST_CASE("counters refuse to go down", "[metrics]") {
    MetricsRegistry registry;
    auto& c = registry.counter("c_total", "h").get();
    CHECK_THROWS_AS(c.inc(-1), std::invalid_argument);
    CHECK_THROWS_AS(c.inc(std::nan("")), std::invalid_argument);
    c.inc(0);
    CHECK(c.value() == 0);
}

TEST_CASE("concurrent updates from several threads add up exactly", "[metrics]") {
    MetricsRegistry registry;
    auto& counters = registry.counter("hits_total", "h", {"t"});
    auto& gauge = registry.gauge("level", "h").get();
    auto& histogram = registry.histogram("lat", "h", {}, {0.5, 1.5}).get();
    constexpr int kThreads = 8;
    constexpr int kPerThread = 100000;
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            // Every thread looks the shared child up itself: creation races too.
            auto& shared = counters.labels({"shared"});
            for (int i = 0; i < kPerThread; ++i) {
                shared.inc();
                gauge.inc(2);
                gauge.dec();
                histogram.observe(static_cast<double>(i % 3));  // 0, 1, 2
            }
            counters.labels({std::to_string(t)}).inc(kPerThread);
        });
    }
    // Scrapes while writers run must not disturb them.
    for (int i = 0; i < 20; ++i) {
        (void)registry.render();
    }
    for (auto& thread : threads) {
        thread.join();
    }
    constexpr double total = double(kThreads) * kPerThread;
    CHECK(counters.labels({"shared"}).value() == total);
    CHECK(gauge.value() == total);
    const auto snap = histogram.snapshot();
    CHECK(snap.count == static_cast<std::uint64_t>(total));
    const std::uint64_t per_value = kThreads * ((kPerThread + 2) / 3);
    CHECK(snap.cumulative_counts[0] == per_value);  // the zeros (100000 % 3 == 1: one extra)
    CHECK(snap.sum == double(kThreads) * (0 * 33334 + 1 * 33333 + 2 * 33333));
    const auto v = view_of(registry.render());
    for (int t = 0; t < kThreads; ++t) {
        CHECK(v.values.at("hits_total{t=" + std::to_string(t) + ",}") == kPerThread);
    }
}

TEST_CASE("collectors add families at render time, and a throwing collector contributes nothing",
          "[metrics]") {
    MetricsRegistry registry;
    registry.gauge("own", "h").get().set(1);
    int calls = 0;
    registry.add_collector([&] {
        ++calls;
        return std::vector<prometheus::MetricFamily>{
            CollectedFamily("ext", "External.", CollectedFamily::Type::gauge)
                .add({{"group", ""}, {"worker", "w\xff"}}, calls)
                .take()};
    });
    registry.add_collector(
        []() -> std::vector<prometheus::MetricFamily> { throw std::runtime_error("source gone"); });
    const auto text = registry.render(
        {CollectedFamily("first", "Given.", CollectedFamily::Type::counter).add({}, 7).take()});
    CHECK(text ==
          "# HELP own h\n# TYPE own gauge\nown 1\n"
          "# HELP first Given.\n# TYPE first counter\nfirst 7\n"
          "# HELP ext External.\n# TYPE ext gauge\next{worker=\"w\xef\xbf\xbd\"} 1\n");
    CHECK(registry.render().find("ext{worker=\"w\xef\xbf\xbd\"} 2\n") != std::string::npos);
}

TEST_CASE("llm latency buckets span milliseconds to minutes and are valid bounds", "[metrics]") {
    const auto b = llm_latency_buckets();
    REQUIRE(b.size() >= 10);
    CHECK(b.front() <= 0.01);
    CHECK(b.back() >= 300);
    MetricsRegistry registry;
    CHECK_NOTHROW(registry.histogram("llm_seconds", "h", {}, b));
}

namespace {

const char* const kWorker0 =
    "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.\n"
    "# TYPE llamacpp:prompt_tokens_total counter\n"
    "llamacpp:prompt_tokens_total 42\n"
    "# HELP llamacpp:prompt_tokens_seconds Average prompt throughput in tokens/s.\n"
    "# TYPE llamacpp:prompt_tokens_seconds gauge\n"
    "llamacpp:prompt_tokens_seconds 123.456\n"
    "# HELP llamacpp:spec_decode_num_accepted_tokens_per_pos_total Accepted tokens per draft "
    "position\n"
    "# TYPE llamacpp:spec_decode_num_accepted_tokens_per_pos_total counter\n"
    "llamacpp:spec_decode_num_accepted_tokens_per_pos_total{position=\"0\"} 7\n"
    "llamacpp:spec_decode_num_accepted_tokens_per_pos_total{position=\"1\"} 3\n";

// The same families in another order, a family the first lacks, exponent notation, a
// timestamp, CRLF line ends and a label that collides with the one the merge adds.
const char* const kWorker1 =
    "# HELP llamacpp:prompt_tokens_seconds Average prompt throughput in tokens/s.\r\n"
    "# TYPE llamacpp:prompt_tokens_seconds gauge\r\n"
    "llamacpp:prompt_tokens_seconds 1.23457e+06 1700000000000\r\n"
    "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.\r\n"
    "# TYPE llamacpp:prompt_tokens_total counter\r\n"
    "llamacpp:prompt_tokens_total 0\r\n"
    "# HELP llamacpp:requests_deferred Number of requests deferred.\r\n"
    "# TYPE llamacpp:requests_deferred gauge\r\n"
    "llamacpp:requests_deferred{worker=\"theirs\"} 2\r\n";

}  // namespace

TEST_CASE("relabel adds the label to every sample and keeps HELP/TYPE once", "[metrics]") {
    CHECK(relabel_exposition(kWorker0, "worker", "0") ==
          "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.\n"
          "# TYPE llamacpp:prompt_tokens_total counter\n"
          "llamacpp:prompt_tokens_total{worker=\"0\"} 42\n"
          "# HELP llamacpp:prompt_tokens_seconds Average prompt throughput in tokens/s.\n"
          "# TYPE llamacpp:prompt_tokens_seconds gauge\n"
          "llamacpp:prompt_tokens_seconds{worker=\"0\"} 123.456\n"
          "# HELP llamacpp:spec_decode_num_accepted_tokens_per_pos_total Accepted tokens per "
          "draft position\n"
          "# TYPE llamacpp:spec_decode_num_accepted_tokens_per_pos_total counter\n"
          "llamacpp:spec_decode_num_accepted_tokens_per_pos_total{worker=\"0\",position=\"0\"} 7\n"
          "llamacpp:spec_decode_num_accepted_tokens_per_pos_total{worker=\"0\",position=\"1\"} "
          "3\n");
    CHECK_THROWS_AS(relabel_exposition(kWorker0, "__worker", "0"), std::invalid_argument);
    CHECK_THROWS_AS(relabel_exposition(kWorker0, "le", "0"), std::invalid_argument);
}

TEST_CASE("merging workers gives one HELP/TYPE per family and a worker label on each sample",
          "[metrics]") {
    const auto merged = merge_expositions("worker", {{"0", kWorker0}, {"1", kWorker1}});
    CHECK(merged ==
          "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.\n"
          "# TYPE llamacpp:prompt_tokens_total counter\n"
          "llamacpp:prompt_tokens_total{worker=\"0\"} 42\n"
          "llamacpp:prompt_tokens_total{worker=\"1\"} 0\n"
          "# HELP llamacpp:prompt_tokens_seconds Average prompt throughput in tokens/s.\n"
          "# TYPE llamacpp:prompt_tokens_seconds gauge\n"
          "llamacpp:prompt_tokens_seconds{worker=\"0\"} 123.456\n"
          "llamacpp:prompt_tokens_seconds{worker=\"1\"} 1234570 1700000000000\n"
          "# HELP llamacpp:spec_decode_num_accepted_tokens_per_pos_total Accepted tokens per "
          "draft position\n"
          "# TYPE llamacpp:spec_decode_num_accepted_tokens_per_pos_total counter\n"
          "llamacpp:spec_decode_num_accepted_tokens_per_pos_total{worker=\"0\",position=\"0\"} 7\n"
          "llamacpp:spec_decode_num_accepted_tokens_per_pos_total{worker=\"0\",position=\"1\"} "
          "3\n"
          "# HELP llamacpp:requests_deferred Number of requests deferred.\n"
          "# TYPE llamacpp:requests_deferred gauge\n"
          "llamacpp:requests_deferred{worker=\"1\",exported_worker=\"theirs\"} 2\n");

    // The class form gives the same text.
    ExpositionMerger merger("worker");
    merger.add("0", kWorker0);
    merger.add("1", kWorker1);
    std::string out = "prefix\n";
    merger.append_to(out);
    CHECK(out == "prefix\n" + merged);
}

TEST_CASE("merging keeps the first declared type and drops a worker that disagrees", "[metrics]") {
    const auto merged =
        merge_expositions("worker", {{"a", "# TYPE m counter\nm 1\n"},
                                     {"b", "# HELP m Late help.\n# TYPE m gauge\nm 5\n"},
                                     {"c", "m 2\n"},
                                     {"d", "# TYPE m counter\nm 3\n"}});
    CHECK(merged ==
          "# HELP m Late help.\n"
          "# TYPE m counter\n"
          "m{worker=\"a\"} 1\n"
          "m{worker=\"d\"} 3\n");
}

TEST_CASE("a family named like another's histogram samples is left out of a merge", "[metrics]") {
    // Worker 0's TYPE line is garbled, so its samples read as untyped families; once worker 1
    // declares the histogram, those families would be read as part of it.
    const auto merged = merge_expositions(
        "worker", {{"0", "# TYPE a histogra\na_bucket{le=\"1\"} 1\na_count 1\ng 1\n"},
                   {"1", "# TYPE a histogram\na_bucket{le=\"+Inf\"} 2\na_count 2\n"}});
    CHECK(merged ==
          "g{worker=\"0\"} 1\n"
          "# TYPE a histogram\n"
          "a_bucket{worker=\"1\",le=\"+Inf\"} 2\n"
          "a_count{worker=\"1\"} 2\n");
}

TEST_CASE("histograms and summaries from a worker keep their sample suffixes together",
          "[metrics]") {
    const char* text =
        "# TYPE lat histogram\n"
        "lat_bucket{le=\"1\"} 1\n"
        "lat_bucket{le=\"+Inf\"} 2\n"
        "lat_sum 3.5\n"
        "lat_count 2\n"
        "lat 9\n"                   // not a histogram sample: dropped
        "lat_bucket 4\n"            // a bucket without le: dropped
        "lat_bucket{le=\"x\"} 4\n"  // or with an le that is not a number
        "# TYPE q summary\n"
        "q{quantile=\"0.5\"} 1\n"
        "q 1\n"  // a quantile sample without quantile: dropped
        "q{quantile=\"high\"} 1\n"
        "q_sum 2\n"
        "q_count 3\n";
    const auto families = parse_exposition(text);
    REQUIRE(families.size() == 2);
    CHECK(families[0].name == "lat");
    CHECK(families[0].samples.size() == 4);
    CHECK(families[1].name == "q");
    CHECK(families[1].samples.size() == 3);
    CHECK(relabel_exposition(text, "w", "0") ==
          "# TYPE lat histogram\n"
          "lat_bucket{w=\"0\",le=\"1\"} 1\n"
          "lat_bucket{w=\"0\",le=\"+Inf\"} 2\n"
          "lat_sum{w=\"0\"} 3.5\n"
          "lat_count{w=\"0\"} 2\n"
          "# TYPE q summary\n"
          "q{w=\"0\",quantile=\"0.5\"} 1\n"
          "q_sum{w=\"0\"} 2\n"
          "q_count{w=\"0\"} 3\n");
}

TEST_CASE("a renamer maps family names, samples follow, an empty name drops the family",
          "[metrics]") {
    const char* text =
        "# HELP llamacpp:a_total A.\n# TYPE llamacpp:a_total counter\nllamacpp:a_total 1\n"
        "# TYPE llamacpp:lat histogram\nllamacpp:lat_bucket{le=\"+Inf\"} 1\n"
        "llamacpp:lat_sum 2\nllamacpp:lat_count 1\n"
        "# TYPE llamacpp:n_tokens_max counter\nllamacpp:n_tokens_max 5\n"
        "llamacpp:bad 3\n";
    const auto rename = [](std::string_view name) -> std::string {
        if (name == "llamacpp:n_tokens_max") {
            return "";
        }
        if (name == "llamacpp:bad") {
            return "not valid";
        }
        std::string out(name);
        std::replace(out.begin(), out.end(), ':', '_');
        return out;
    };
    CHECK(merge_expositions("worker", {{"0", text}}, rename) ==
          "# HELP llamacpp_a_total A.\n# TYPE llamacpp_a_total counter\n"
          "llamacpp_a_total{worker=\"0\"} 1\n"
          "# TYPE llamacpp_lat histogram\n"
          "llamacpp_lat_bucket{worker=\"0\",le=\"+Inf\"} 1\n"
          "llamacpp_lat_sum{worker=\"0\"} 2\n"
          "llamacpp_lat_count{worker=\"0\"} 1\n");
}

TEST_CASE("label values are written as valid UTF-8 whatever they hold", "[metrics]") {
    MetricsRegistry registry;
    auto& family = registry.counter("paths_total", "Paths.", {"path"});
    // Kept as is: two-, three- and four-byte sequences.
    family.labels({"/caf\xc3\xa9/\xe6\x97\xa5/\xf0\x9f\x98\x80"}).inc();
    // Replaced: a stray byte, a cut sequence, a surrogate, an overlong form.
    family.labels({"/a\xff\xc3(\xed\xa0\x80\xc0\xaf"}).inc();
    CHECK(registry.render() ==
          "# HELP paths_total Paths.\n"
          "# TYPE paths_total counter\n"
          "paths_total{path=\"/a\xef\xbf\xbd\xef\xbf\xbd(\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"
          "\xef\xbf\xbd\xef\xbf\xbd\"} 1\n"
          "paths_total{path=\"/caf\xc3\xa9/\xe6\x97\xa5/\xf0\x9f\x98\x80\"} 1\n");
    std::string help;
    append_escaped_help(help, "Bad \xff byte.");
    CHECK(help == "Bad \xef\xbf\xbd byte.");
}

TEST_CASE("malformed exposition lines are skipped and the rest is kept", "[metrics]") {
    const std::string text =
        "good_one 1\n"
        "# TYPE good_one gauge\n"  // too late: the family already has samples
        "# TYPE odd notatype\n"
        "# HELP\n"
        "# TYPE\n"
        "# HELP 9bad help\n"
        "# just a comment\n"
        "9bad 1\n"
        "bad-name 1\n"
        "no_value\n"
        "no_value_labels{a=\"b\"}\n"
        "bad_value 1.2.3\n"
        "bad_value2 0x10\n"
        "unterminated{a=\"b 1\n"
        "unclosed{a=\"b\" 1\n"
        "no_quotes{a=b} 1\n"
        "dup_label{a=\"1\",a=\"2\"} 1\n"
        "reserved_label{__name__=\"x\"} 1\n"
        "bad_ts 1 12x\n"
        "trailing_junk 1 2 3\n"
        "escape_at_end{a=\"\\\n"
        "\n"
        "   \t  \n"
        "{a=\"b\"} 1\n"
        "spaced { a = \"x\" , b=\"y\", } -2.5e3\n"
        "infs{k=\"+\"} +Inf\n"
        "infs{k=\"-\"} -inf\n"
        "nan NaN\n"
        "odd_escape{a=\"x\\ty\"} 1\n"
        "good_two{a=\"q\\\"\\\\\\n\"} 2 -5\n";
    const auto out = relabel_exposition(text, "worker", "w");
    CHECK(out ==
          "good_one{worker=\"w\"} 1\n"
          "spaced{worker=\"w\",a=\"x\",b=\"y\"} -2500\n"
          "infs{worker=\"w\",k=\"+\"} +Inf\n"
          "infs{worker=\"w\",k=\"-\"} -Inf\n"
          "nan{worker=\"w\"} NaN\n"
          "odd_escape{worker=\"w\",a=\"x\\\\ty\"} 1\n"
          "good_two{worker=\"w\",a=\"q\\\"\\\\\\n\"} 2 -5\n");
}

TEST_CASE("the reader survives every prefix and every byte flip of an exposition", "[metrics]") {
    const std::string base = std::string(kWorker0) + kWorker1 +
                             "# TYPE lat histogram\nlat_bucket{le=\"1\",x=\"a\\\"b\"} 1\n";
    for (std::size_t n = 0; n <= base.size(); ++n) {
        const auto once = relabel_exposition(base.substr(0, n), "worker", "0");
        // What we write reads back to the same thing: nothing in it is skipped or changed.
        std::string again;
        append_exposition(again, parse_exposition(once));
        CHECK(again == once);
    }
    for (std::size_t i = 0; i < base.size(); ++i) {
        for (const char c : {'\0', '"', '\\', '{', '}', '\n', ' ', '#', '\xff'}) {
            std::string mutated = base;
            mutated[i] = c;
            const auto merged = merge_expositions("worker", {{"0", mutated}, {"1", base}});
            // Whatever the damage, the merge is valid exposition: it reads back to itself and
            // names each family's type once (Prometheus refuses a repeated header).
            std::string again;
            append_exposition(again, parse_exposition(merged));
            CHECK(again == merged);
            std::set<std::string> typed;
            std::istringstream lines(merged);
            for (std::string line; std::getline(lines, line);) {
                if (line.rfind("# TYPE ", 0) == 0) {
                    CHECK(typed.insert(line.substr(7, line.find(' ', 7) - 7)).second);
                }
            }
        }
    }
}

TEST_CASE("process metrics are present with sane values", "[metrics]") {
    MetricsRegistry registry;
    registry.add_collector(collect_process_metrics);
    const auto out = registry.render();
    const auto v = view_of(out);
    const auto value = [&](const std::string& name) { return v.values.at(name + "{}"); };
    CHECK(v.types.at("process_cpu_seconds_total") == "counter");
    for (const char* gauge :
         {"process_resident_memory_bytes", "process_virtual_memory_bytes", "process_open_fds",
          "process_max_fds", "process_start_time_seconds", "process_threads"}) {
        INFO(gauge);
        CHECK(v.types.at(gauge) == "gauge");
    }
    CHECK(count_lines_starting_with(out, "# HELP ") == 7);
    CHECK(count_lines_starting_with(out, "# TYPE ") == 7);
    CHECK(value("process_cpu_seconds_total") >= 0);
    CHECK(value("process_resident_memory_bytes") > 0);
    CHECK(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
    CHECK(value("process_open_fds") > 0);
    CHECK(value("process_max_fds") >= value("process_open_fds"));
    CHECK(value("process_threads") >= 1);
    const double now =
        std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    CHECK(value("process_start_time_seconds") <= now + 2);
    CHECK(value("process_start_time_seconds") > now - 7 * 24 * 3600);

    // Read live: a second thread shows while it runs.
    std::promise<void> release;
    std::thread idle([done = release.get_future()] { done.wait(); });
    const auto again = registry.render();
    release.set_value();
    idle.join();
    CHECK(view_of(again).values.at("process_threads{}") >= 2);
}
