// Prefix affinity reads every request body (as Relay::affinity_key_for does when the balancer
// is prefix-affinity): the client's JSON, whatever its shape, must give a key and never throw
// or crash; requests that share a prefix must share the key.

#include <algorithm>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/affinity.hpp"
#include "test/fuzz/fuzz_support.hpp"

using namespace llama_pool;

namespace {

// The deepest nesting of a parsed document, for checking json_nesting_at_most against the
// real parser.
std::size_t depth_of(const nlohmann::json& j) {
    if (!j.is_structured()) {
        return 0;
    }
    std::size_t deepest = 0;
    for (const auto& child : j) {
        deepest = std::max(deepest, depth_of(child));
    }
    return deepest + 1;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto input = fuzz::as_text(data, size);
    const auto body = nlohmann::json::parse(input, nullptr, /*allow_exceptions=*/false);
    // The relay's guard agrees with the parser on every document it accepts. nlohmann's
    // lexer takes a NUL byte for the end of the input (as llama-server's does too), so the
    // document is what comes before the first NUL; the guard, which also looks past it,
    // only errs on the safe side there.
    if (!body.is_discarded()) {
        const auto document = input.substr(0, input.find('\0'));
        const auto depth = depth_of(body);
        FUZZ_CHECK(json_nesting_at_most(document, depth));
        if (depth > 0) {
            FUZZ_CHECK(!json_nesting_at_most(document, depth - 1));
            FUZZ_CHECK(!json_nesting_at_most(input, depth - 1));
        }
    }
    const auto text = prompt_text(body);
    if (!body.is_object()) {
        FUZZ_CHECK(text.empty());
    }

    const std::size_t prefix = fuzz::input_hash(input) % 300;
    const auto key = affinity_key(text, prefix);
    if (prefix == 0 || text.empty()) {
        FUZZ_CHECK(key == 0);
    }
    // Only the prefix counts: whatever follows it does not move the request.
    FUZZ_CHECK(key == affinity_key(std::string_view(text).substr(0, prefix), prefix));
    if (text.size() >= prefix) {
        FUZZ_CHECK(key == affinity_key(text + "a tail that differs", prefix));
    }

    // The ranking is a permutation of the workers, stable for the same key.
    const std::vector<std::string> workers = {"0", "1", "2", "w3", "w3"};
    const auto order = rendezvous_order(key, workers);
    FUZZ_CHECK(order == rendezvous_order(key, workers));
    auto sorted = order;
    std::sort(sorted.begin(), sorted.end());
    for (std::size_t i = 0; i < sorted.size(); ++i) {
        FUZZ_CHECK(sorted[i] == i);
    }
    return 0;
}
