// The config file parser (JSON with comments) and the checks after it. The file is the
// operator's, but it is re-read on SIGHUP by a running pool: a file that makes the parser
// throw or crash takes the serving pool down instead of being "logged with every error and
// changing nothing".

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/config.hpp"
#include "test/fuzz/fuzz_support.hpp"

using namespace llama_pool;

namespace {

void check_error_lines(const std::vector<std::string>& errors) {
    for (const auto& e : errors) {
        FUZZ_CHECK(!e.empty());
        // config.hpp: "every problem found, each one line" (main prints them one per line).
        FUZZ_CHECK(e.find('\n') == std::string::npos);
    }
}

// An upstream URL the pool accepts must name something it can connect to: the pool reports a
// bad value at start, rather than running with an upstream that can never be reached.
void check_upstream_url(const std::string& url) {
    UpstreamAddress address;
    std::string error;
    if (!parse_upstream_url(url, address, error)) {
        FUZZ_CHECK(!error.empty());
        return;
    }
    FUZZ_CHECK(url.rfind("http://", 0) == 0 || url.rfind("dns://", 0) == 0);
    FUZZ_CHECK(address.port > 0);
    FUZZ_CHECK(address.weight > 0 && address.weight <= 1000);
    FUZZ_CHECK(!address.host.empty());
    for (const char c : address.host) {
        const auto u = static_cast<unsigned char>(c);
        FUZZ_CHECK(u > 0x20 && u != 0x7f && c != '[' && c != ']' && c != '/');
    }
}

// Flags and environment variables reach the same settings as text: a value is whatever bytes
// the shell passed (file names need not be UTF-8), and must be refused with an error or
// taken as given, never thrown on.
void check_text_sources(const std::string& text) {
    const EnvLookup no_env = [](const std::string&) -> std::optional<std::string> {
        return std::nullopt;
    };
    for (const char* flag : {"--model", "--host", "--port", "--shutdown-grace", "--legacy-flags",
                             "--balancer", "--worker-arg", "--upstream"}) {
        const auto loaded = load_config({"--workers", "0", flag, text}, no_env);
        check_error_lines(loaded.errors);
        if (std::string_view(flag) == "--model" && loaded.ok()) {
            FUZZ_CHECK(loaded.config.model == text);
        }
    }
    const EnvLookup env = [&](const std::string& name) -> std::optional<std::string> {
        if (name == "LLAMA_POOL_WORKERS") {
            return "0";
        }
        if (name == "LLAMA_POOL_MODEL" || name == "LLAMA_POOL_UPSTREAMS" ||
            name == "LLAMA_POOL_PORT") {
            return text;
        }
        return std::nullopt;
    };
    check_error_lines(load_config({}, env).errors);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string text(fuzz::as_text(data, size));

    PoolConfig config;
    std::vector<std::string> errors;
    apply_config_json(text, "fuzz.json", config, errors);
    check_error_lines(errors);
    for (const auto& e : errors) {
        FUZZ_CHECK(e.rfind("fuzz.json: ", 0) == 0);
    }
    for (const auto& url : config.upstreams) {
        check_upstream_url(url);
    }
    // The URL parser and the flag and environment paths see the raw input too, so that
    // mutations reach them directly.
    check_upstream_url(text);
    check_text_sources(text);
    // validate_config only stats and access()es the paths it is given; nothing is opened.
    validate_config(config, errors);
    check_error_lines(errors);

    // What --check-config prints reads back to the same configuration, whatever was
    // accepted: accepted values are within the bounds the reader enforces.
    const auto dumped = config_to_json(config, /*show_secrets=*/true)
                            .dump(-1, ' ', false, nlohmann::json::error_handler_t::strict);
    PoolConfig reread;
    std::vector<std::string> reread_errors;
    apply_config_json(dumped, "dump", reread, reread_errors);
    FUZZ_CHECK(reread_errors.empty());
    FUZZ_CHECK(reread == config);
    FUZZ_CHECK(changed_keys(config, reread).empty());
    return 0;
}
