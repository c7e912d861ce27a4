// classify_health reads every /health reply of every worker, every probe interval, on the
// worker's owner thread: whatever a fork (or a process that took the worker's port) answers,
// it must give a verdict and never throw.

#include <cstdint>
#include <string_view>

#include "supervisor/health_body.hpp"
#include "test/fuzz/fuzz_support.hpp"

using namespace llama_pool;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto body = fuzz::as_text(data, size);
    for (const int status : {200, 503, 500, 404, 0}) {
        const auto verdict = classify_health(status, body);
        FUZZ_CHECK(verdict == HealthVerdict::ok || verdict == HealthVerdict::loading ||
                   verdict == HealthVerdict::busy || verdict == HealthVerdict::error);
        FUZZ_CHECK(to_string(verdict) != "unknown");
        // Only a 200 puts a worker in rotation, whatever the body says.
        if (status != 200) {
            FUZZ_CHECK(verdict != HealthVerdict::ok);
        }
    }
    return 0;
}
