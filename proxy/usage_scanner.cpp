#include "proxy/usage_scanner.hpp"

#include <nlohmann/json.hpp>

namespace llama_pool {

namespace {

UsageScanner::Usage from_object(const nlohmann::json& j) {
    UsageScanner::Usage u;
    if (!j.is_object()) {
        return u;
    }
    // Counts feed Prometheus counters, which only go up: anything negative, fractional
    // below zero or beyond a sane size from a worker counts as nothing.
    auto number = [](const nlohmann::json& obj, const char* key) -> long long {
        const auto it = obj.find(key);
        if (it == obj.end() || !it->is_number()) {
            return 0;
        }
        const double v = it->get<double>();
        return v >= 0 && v < 1e15 ? static_cast<long long>(v) : 0;
    };
    if (const auto usage = j.find("usage"); usage != j.end() && usage->is_object()) {
        u.predicted = number(*usage, "completion_tokens");
        u.prompt = number(*usage, "prompt_tokens");
        u.found = true;
    } else if (const auto stop = j.find("stop");
               j.contains("tokens_predicted") &&
               (stop == j.end() || !stop->is_boolean() || stop->get<bool>())) {
        u.predicted = number(j, "tokens_predicted");
        u.prompt = number(j, "tokens_evaluated");
        u.found = true;
    } else if (const auto t = j.find("timings"); t != j.end() && t->is_object()) {
        u.predicted = number(*t, "predicted_n");
        u.prompt = number(*t, "prompt_n");
        u.found = true;
    }
    return u;
}

}  // namespace

void UsageScanner::feed(std::string_view piece) {
    tail_.append(piece);
    if (tail_.size() > max_tail_) {
        tail_.erase(0, tail_.size() - max_tail_);
        truncated_ = true;
    }
}

UsageScanner::Usage UsageScanner::finish(bool event_stream) const {
    if (!event_stream) {
        if (truncated_) {
            return {};
        }
        return from_object(nlohmann::json::parse(tail_, nullptr, false));
    }
    // The last event that carries counts; the stream's final events come last.
    std::size_t end = tail_.size();
    while (end > 0) {
        const auto start = tail_.rfind("data: ", end - 1);
        if (start == std::string::npos) {
            break;
        }
        auto payload = std::string_view(tail_).substr(start + 6, end - start - 6);
        while (!payload.empty() && (payload.back() == '\n' || payload.back() == '\r')) {
            payload.remove_suffix(1);
        }
        if (payload != "[DONE]") {
            const auto u = from_object(nlohmann::json::parse(payload, nullptr, false));
            if (u.found) {
                return u;
            }
        }
        end = start;
    }
    return {};
}

}  // namespace llama_pool
