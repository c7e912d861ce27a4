#include "proxy/usage_scanner.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>

namespace llama_pool {

namespace {

// Counts feed Prometheus counters, which only go up: anything negative, fractional below
// zero or beyond a sane size from a worker counts as nothing.
long long count_value(double v) {
    return v >= 0 && v < 1e15 ? static_cast<long long>(v) : 0;
}

// Reads the counts from the parser's events instead of building the document: the relay
// scans every reply, and building then freeing a DOM cost more than the rest of a small
// request's relay (callgrind). Same answers as looking the fields up in the parsed object:
// only the top-level object's fields count, and when a key repeats the last one wins.
class CountsReader final : public nlohmann::json_sax<nlohmann::json> {
  public:
    UsageScanner::Usage result() const {
        UsageScanner::Usage u;
        if (!top_level_object_) {
            return u;
        }
        if (usage_.is_object) {
            u.predicted = usage_.first;
            u.prompt = usage_.second;
            u.found = true;
        } else if (tokens_predicted_seen_ && stop_ != Stop::is_false) {
            u.predicted = top_.first;
            u.prompt = top_.second;
            u.found = true;
        } else if (timings_.is_object) {
            u.predicted = timings_.first;
            u.prompt = timings_.second;
            u.found = true;
        }
        return u;
    }

    bool null() override { return scalar(Scalar::other); }
    bool boolean(bool value) override { return scalar(value ? Scalar::is_true : Scalar::is_false); }
    bool number_integer(number_integer_t value) override {
        return number(static_cast<double>(value));
    }
    bool number_unsigned(number_unsigned_t value) override {
        return number(static_cast<double>(value));
    }
    bool number_float(number_float_t value, const string_t&) override { return number(value); }
    bool string(string_t&) override { return scalar(Scalar::other); }
    bool binary(binary_t&) override { return scalar(Scalar::other); }

    bool start_object(std::size_t) override {
        Pair* const opened = depth_ == 1 ? field_ : nullptr;
        forget_pending();
        if (depth_ == 0) {
            top_level_object_ = true;
        } else if (opened != nullptr) {
            opened->is_object = true;  // "usage" or "timings" is an object: read inside it
            inside_ = opened;
        }
        ++depth_;
        return true;
    }
    bool end_object() override {
        --depth_;
        if (depth_ == 1) {
            inside_ = nullptr;
        }
        forget_pending();
        return true;
    }
    bool start_array(std::size_t) override {
        ++depth_;
        forget_pending();
        return true;
    }
    bool end_array() override {
        --depth_;
        return true;
    }

    bool key(string_t& name) override {
        forget_pending();
        if (depth_ == 1) {
            // A repeated key replaces what its earlier value said.
            if (name == "usage" || name == "timings") {
                field_ = name == "usage" ? &usage_ : &timings_;
                *field_ = Pair{};
            } else if (name == "tokens_predicted") {
                tokens_predicted_seen_ = true;
                top_.first = 0;
                slot_ = &top_.first;
            } else if (name == "tokens_evaluated") {
                top_.second = 0;
                slot_ = &top_.second;
            } else if (name == "stop") {
                stop_ = Stop::other;  // unless the value is a boolean
                stop_key_ = true;
            }
        } else if (depth_ == 2 && inside_ != nullptr) {
            const bool usage = inside_ == &usage_;
            if (name == (usage ? "completion_tokens" : "predicted_n")) {
                inside_->first = 0;
                slot_ = &inside_->first;
            } else if (name == (usage ? "prompt_tokens" : "prompt_n")) {
                inside_->second = 0;
                slot_ = &inside_->second;
            }
        }
        return true;
    }

    bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
        top_level_object_ = false;  // a reply that does not parse counts nothing
        return false;
    }

  private:
    enum class Scalar { is_true, is_false, other };
    enum class Stop { absent, is_true, is_false, other };
    struct Pair {
        bool is_object = false;
        long long first = 0;   // predicted
        long long second = 0;  // prompt
    };

    bool scalar(Scalar kind) {
        if (stop_key_) {
            stop_ = kind == Scalar::is_true    ? Stop::is_true
                    : kind == Scalar::is_false ? Stop::is_false
                                               : Stop::other;
        }
        forget_pending();
        return true;
    }
    bool number(double value) {
        if (slot_ != nullptr) {
            *slot_ = count_value(value);
        }
        return scalar(Scalar::other);
    }

    // What the last key announced applies to the value right after it, and only to it.
    void forget_pending() {
        field_ = nullptr;
        slot_ = nullptr;
        stop_key_ = false;
    }

    int depth_ = 0;
    bool top_level_object_ = false;
    Pair usage_, timings_, top_;
    bool tokens_predicted_seen_ = false;
    Stop stop_ = Stop::absent;
    Pair* field_ = nullptr;      // the top-level "usage"/"timings" whose value comes next
    Pair* inside_ = nullptr;     // the "usage"/"timings" object being read
    long long* slot_ = nullptr;  // the count whose value comes next
    bool stop_key_ = false;      // the top-level "stop" value comes next
};

// Only a key named usage, timings or tokens_predicted makes counts found, so a reply that spells
// none of them, and no \u escape (the only other way to spell a key's letters), is not parsed:
// /tokenize and /detokenize replies, most of the traffic that takes no slot. Parsing a
// /tokenize reply's token list was 2% of the pool's CPU samples at 16 connections (perf).
bool may_carry_counts(std::string_view json) {
    for (const std::string_view key : {"usage", "timings", "tokens_predicted", "\\u"}) {
        if (json.find(key) != std::string_view::npos) {
            return true;
        }
    }
    return false;
}

UsageScanner::Usage read_counts(std::string_view json) {
    if (!may_carry_counts(json)) {
        return {};
    }
    CountsReader reader;
    nlohmann::json::sax_parse(json, &reader);
    return reader.result();
}

}  // namespace

void UsageScanner::feed(std::string_view piece) {
    tail_.append(piece);
    if (tail_.size() > max_tail_) {
        truncated_ = true;
        // Trimmed in steps rather than on every piece: erasing the front moves the whole
        // tail, a 256 KiB move per event once a long stream passed the limit.
        if (tail_.size() - max_tail_ > std::min<std::size_t>(max_tail_, 64 * 1024)) {
            tail_.erase(0, tail_.size() - max_tail_);
        }
    }
}

UsageScanner::Usage UsageScanner::finish(bool event_stream) const {
    const auto tail =
        std::string_view(tail_).substr(tail_.size() - std::min(tail_.size(), max_tail_));
    if (!event_stream) {
        if (truncated_) {
            return {};
        }
        return read_counts(tail);
    }
    // The last event that carries counts; the stream's final events come last.
    std::size_t end = tail.size();
    while (end > 0) {
        const auto start = tail.rfind("data: ", end - 1);
        if (start == std::string::npos) {
            break;
        }
        auto payload = tail.substr(start + 6, end - start - 6);
        while (!payload.empty() && (payload.back() == '\n' || payload.back() == '\r')) {
            payload.remove_suffix(1);
        }
        if (payload != "[DONE]") {
            const auto u = read_counts(payload);
            if (u.found) {
                return u;
            }
        }
        end = start;
    }
    return {};
}

}  // namespace llama_pool
