#include "common/log.hpp"

#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <ctime>

namespace llama_pool {

const char* to_string(LogLevel level) {
    switch (level) {
        case LogLevel::debug:
            return "debug";
        case LogLevel::info:
            return "info";
        case LogLevel::warn:
            return "warn";
        case LogLevel::error:
            return "error";
    }
    return "unknown";
}

namespace {

std::string utc_timestamp() {
    const auto now = std::chrono::system_clock::now();
    const auto secs = std::chrono::system_clock::to_time_t(now);
    const auto millis =
        std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() %
        1000;
    std::tm tm{};
    gmtime_r(&secs, &tm);
    return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", tm.tm_year + 1900,
                       tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, millis);
}

bool needs_quotes(std::string_view v) {
    if (v.empty()) {
        return true;
    }
    for (const char c : v) {
        if (c == ' ' || c == '"' || c == '=' || c == '\\' || static_cast<unsigned char>(c) < 0x20) {
            return true;
        }
    }
    return false;
}

void append_text_value(std::string& out, const nlohmann::json& value) {
    if (value.is_string()) {
        const auto& s = value.get_ref<const std::string&>();
        if (needs_quotes(s)) {
            // JSON string escaping is a well-defined quoting for one line of text.
            out += nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
        } else {
            out += s;
        }
    } else {
        out += value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    }
}

}  // namespace

Logger::Logger(LogFormat format, LogLevel min_level, Sink sink)
    : format_(format), min_level_(min_level), sink_(std::move(sink)) {}

std::string Logger::format_line(LogFormat format, std::string_view timestamp, LogLevel level,
                                std::string_view component, std::string_view event,
                                const nlohmann::json& fields) {
    if (format == LogFormat::json) {
        nlohmann::ordered_json line;
        line["ts"] = timestamp;
        line["level"] = to_string(level);
        line["component"] = component;
        line["event"] = event;
        if (fields.is_object()) {
            for (const auto& [k, v] : fields.items()) {
                line[k] = v;
            }
        }
        return line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    }
    std::string out = fmt::format("ts={} level={} component={} event={}", timestamp,
                                  to_string(level), component, event);
    if (fields.is_object()) {
        for (const auto& [k, v] : fields.items()) {
            out += ' ';
            out += k;
            out += '=';
            append_text_value(out, v);
        }
    }
    return out;
}

void Logger::log(LogLevel level, std::string_view component, std::string_view event,
                 const nlohmann::json& fields) {
    if (!enabled(level)) {
        return;
    }
    auto line = format_line(format_, utc_timestamp(), level, component, event, fields);
    std::lock_guard lock(mutex_);
    if (sink_) {
        sink_(line);
    } else {
        line += '\n';
        std::fwrite(line.data(), 1, line.size(), stderr);
        std::fflush(stderr);
    }
}

}  // namespace llama_pool
