#include "supervisor/probes.hpp"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "common/http_client.hpp"

namespace llama_pool {

namespace {

Headers auth_headers(const ProbeTarget& target) {
    Headers headers;
    if (!target.api_key.empty()) {
        headers.add("Authorization", "Bearer " + target.api_key);
    }
    return headers;
}

}  // namespace

HealthProbe probe_health(const ProbeTarget& target, milliseconds timeout) {
    HealthProbe probe;
    const auto r = http_fetch(target.host, target.port, "GET", "/health", {}, {}, timeout,
                              64 * 1024, target.watch);
    if (r.status == 0) {
        probe.error = r.error.empty() ? "no reply" : r.error;
        return probe;
    }
    probe.answered = true;
    probe.status = r.status;
    probe.verdict = classify_health(r.status, r.body);
    if (!probe.healthy()) {
        probe.error = fmt::format("health {} ({})", r.status, to_string(probe.verdict));
    }
    return probe;
}

bool probe_completion(const ProbeTarget& target, milliseconds timeout, std::string& error) {
    auto headers = auth_headers(target);
    headers.add("Content-Type", "application/json");
    // One token, no prompt cache: the whole decode path in well under a second on a loaded
    // model. The native /embedding route answers whatever the server's pooling is.
    const std::string body = target.embeddings
                                 ? R"({"content":"Hello"})"
                                 : R"({"prompt":"Hello","n_predict":1,"cache_prompt":false})";
    const auto r = http_fetch(target.host, target.port, "POST",
                              target.embeddings ? "/embedding" : "/completion", headers, body,
                              timeout, 1 << 20, target.watch);
    if (r.status != 200) {
        error = r.status == 0 ? fmt::format("no reply ({})", r.error)
                              : fmt::format("status {}: {}", r.status, r.body.substr(0, 200));
        return false;
    }
    const auto doc = nlohmann::json::parse(r.body, nullptr, false);
    if (target.embeddings) {
        // A list of {index, embedding} (current llama.cpp) or one {embedding} (older forks).
        if (!(doc.is_array() || (doc.is_object() && doc.contains("embedding")))) {
            error = "reply without an embedding";
            return false;
        }
        return true;
    }
    if (!doc.is_object() || !doc.contains("content")) {
        error = "reply without content";
        return false;
    }
    return true;
}

WorkerProgress decode_progress(std::string_view exposition) {
    // Names as llama.cpp and BitNet's fork print them; no labels on these series.
    static constexpr std::string_view kCounters[] = {
        "llamacpp:n_decode_total", "llamacpp:tokens_predicted_total",
        "llamacpp:n_tokens_predicted_total", "llamacpp:prompt_tokens_total"};
    static constexpr std::string_view kProcessing = "llamacpp:requests_processing";
    WorkerProgress out;
    const auto value_after = [](std::string_view line, std::string_view name) {
        std::optional<double> value;
        if (line.size() > name.size() && line.substr(0, name.size()) == name &&
            line[name.size()] == ' ') {
            try {
                value = std::stod(std::string(line.substr(name.size() + 1)));
            } catch (const std::exception&) {
            }
        }
        return value;
    };
    while (!exposition.empty()) {
        const auto end = exposition.find('\n');
        const auto line = exposition.substr(0, end);
        exposition =
            end == std::string_view::npos ? std::string_view() : exposition.substr(end + 1);
        for (const auto name : kCounters) {
            if (const auto v = value_after(line, name); v && *v >= 0 && *v < 1e18) {
                out.work += static_cast<std::uint64_t>(*v);
                out.has_work = true;
            }
        }
        if (const auto v = value_after(line, kProcessing); v && *v >= 0 && *v < 1e6) {
            out.processing = static_cast<int>(*v);
        }
    }
    return out;
}

std::optional<WorkerProgress> read_decode_progress(const ProbeTarget& target,
                                                   milliseconds timeout) {
    const auto r = http_fetch(target.host, target.port, "GET", "/metrics", auth_headers(target), {},
                              timeout, 1 << 20, target.watch);
    if (r.status != 200) {
        return std::nullopt;
    }
    return decode_progress(r.body);
}

int read_capacity(const ProbeTarget& target, milliseconds timeout, int fallback) {
    const auto r = http_fetch(target.host, target.port, "GET", "/props", auth_headers(target), {},
                              timeout, 1 << 20, target.watch);
    if (r.status != 200) {
        return fallback;
    }
    const auto doc = nlohmann::json::parse(r.body, nullptr, false);
    if (doc.is_object() && doc.contains("total_slots") && doc["total_slots"].is_number_integer() &&
        doc["total_slots"].get<int>() > 0) {
        return doc["total_slots"].get<int>();
    }
    return fallback;
}

}  // namespace llama_pool
