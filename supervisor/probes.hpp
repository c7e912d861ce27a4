#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/clock.hpp"
#include "common/socket.hpp"
#include "supervisor/health_body.hpp"
#include "supervisor/stall_detector.hpp"

namespace llama_pool {

// Where a probe goes: a managed worker on loopback or an upstream the pool does not manage.
struct ProbeTarget {
    std::string host;
    std::uint16_t port = 0;
    std::string api_key;      // sent as a Bearer token when set
    IoWatch watch;            // lets a stop interrupt a probe in flight
    bool embeddings = false;  // an embeddings-only server: probe with an embedding
};

struct HealthProbe {
    bool answered = false;  // something replied with HTTP at all
    int status = 0;
    HealthVerdict verdict = HealthVerdict::error;
    std::string error;
    // Busy (no free slot) is alive: the pool's own accounting decides about capacity.
    bool healthy() const { return verdict == HealthVerdict::ok || verdict == HealthVerdict::busy; }
};

HealthProbe probe_health(const ProbeTarget& target, milliseconds timeout);

// A one-token completion (an embedding of one word for an embeddings server): /health stays
// green on a server whose decode loop is stuck, so only this shows that the worker really
// computes.
bool probe_completion(const ProbeTarget& target, milliseconds timeout, std::string& error);

WorkerProgress decode_progress(std::string_view exposition);
// decode_progress() of the worker's /metrics; empty when it does not answer in time (a
// llama-server answers /metrics from its main loop, so a stuck one does not).
std::optional<WorkerProgress> read_decode_progress(const ProbeTarget& target, milliseconds timeout);

// The slot count from /props (`total_slots`), or `fallback` when it is not there.
int read_capacity(const ProbeTarget& target, milliseconds timeout, int fallback);

}  // namespace llama_pool
