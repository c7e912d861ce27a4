#include "supervisor/health_body.hpp"

#include <algorithm>
#include <cctype>
#include <nlohmann/json.hpp>
#include <string>

namespace llama_pool {

std::string_view to_string(HealthVerdict verdict) {
    switch (verdict) {
        case HealthVerdict::ok:
            return "ok";
        case HealthVerdict::loading:
            return "loading";
        case HealthVerdict::busy:
            return "busy";
        case HealthVerdict::error:
            return "error";
    }
    return "unknown";
}

namespace {

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return s;
}

}  // namespace

HealthVerdict classify_health(int status, std::string_view body) {
    const auto doc = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
    std::string text;
    if (doc.is_object()) {
        if (const auto it = doc.find("status"); it != doc.end() && it->is_string()) {
            text = lower(it->get<std::string>());
        } else if (const auto err = doc.find("error"); err != doc.end() && err->is_object()) {
            if (const auto m = err->find("message"); m != err->end() && m->is_string()) {
                text = lower(m->get<std::string>());
            }
        }
    }
    if (status == 200 && text == "ok") {
        return HealthVerdict::ok;
    }
    if (text.find("loading") != std::string::npos) {
        return HealthVerdict::loading;
    }
    if (text.find("no slot") != std::string::npos) {
        return HealthVerdict::busy;
    }
    return HealthVerdict::error;
}

}  // namespace llama_pool
