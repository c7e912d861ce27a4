#pragma once

#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace llama_pool {

enum class LogLevel { debug, info, warn, error };
enum class LogFormat { text, json };

const char* to_string(LogLevel level);

// One event per line. Text lines are `ts=... level=... component=... event=... k=v ...`
// (values with spaces or quotes are quoted); JSON lines carry the same keys. Fields are a
// JSON object so that numbers stay numbers in JSON output.
//
// Thread-safe: lines from different threads never interleave. There is one Logger per
// process, owned by main and passed by reference (no global logger).
class Logger {
  public:
    using Sink = std::function<void(std::string_view line)>;

    explicit Logger(LogFormat format = LogFormat::text, LogLevel min_level = LogLevel::info,
                    Sink sink = {});

    void log(LogLevel level, std::string_view component, std::string_view event,
             const nlohmann::json& fields = nlohmann::json::object());
    void debug(std::string_view c, std::string_view e, const nlohmann::json& f = {}) {
        log(LogLevel::debug, c, e, f);
    }
    void info(std::string_view c, std::string_view e, const nlohmann::json& f = {}) {
        log(LogLevel::info, c, e, f);
    }
    void warn(std::string_view c, std::string_view e, const nlohmann::json& f = {}) {
        log(LogLevel::warn, c, e, f);
    }
    void error(std::string_view c, std::string_view e, const nlohmann::json& f = {}) {
        log(LogLevel::error, c, e, f);
    }

    bool enabled(LogLevel level) const { return level >= min_level_; }
    void set_format(LogFormat format) { format_ = format; }
    void set_min_level(LogLevel level) { min_level_ = level; }

    // Pure formatting, exposed for tests.
    static std::string format_line(LogFormat format, std::string_view timestamp, LogLevel level,
                                   std::string_view component, std::string_view event,
                                   const nlohmann::json& fields);

  private:
    LogFormat format_;
    LogLevel min_level_;
    Sink sink_;
    std::mutex mutex_;
};

}  // namespace llama_pool
