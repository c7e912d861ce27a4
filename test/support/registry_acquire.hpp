#pragma once

// A blocking lease for unit tests of the registry: try_acquire() and, while the request is
// queued, a poll() on its Place's descriptor, which is how an event loop waits for it, on this
// thread. The registry itself has no blocking acquire: every production caller waits through
// a Place (Relay::Run).
#include <poll.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <set>
#include <string>

#include "proxy/backend_registry.hpp"

namespace llama_pool::test {

namespace detail {

// Waits for `place` until it is served, `deadline` passes or `cancelled()` turns true. The
// predicate is a test's flag set from another thread, so it is looked at every few
// milliseconds; the place's own wake-up is immediate.
inline BackendRegistry::AcquireResult wait_place(std::unique_ptr<BackendRegistry::Place>& place,
                                                 TimePoint deadline,
                                                 const std::function<bool()>& cancelled) {
    constexpr auto kCancelLook = milliseconds(5);
    BackendRegistry::AcquireResult result;
    while (true) {
        if (auto taken = place->take()) {
            return std::move(*taken);
        }
        const auto now = Clock::now();
        if (now >= deadline) {
            result.status = BackendRegistry::AcquireStatus::timeout;
            break;
        }
        if (cancelled && cancelled()) {
            result.status = BackendRegistry::AcquireStatus::cancelled;
            break;
        }
        const auto wait = std::min<Duration>(deadline - now, kCancelLook);
        pollfd p{place->fd(), POLLIN, 0};
        ::poll(&p, 1, static_cast<int>(std::chrono::ceil<milliseconds>(wait).count()));
    }
    place.reset();  // leaves the queue, or passes on a slot handed to it meanwhile
    return result;
}

}  // namespace detail

inline BackendRegistry::AcquireResult acquire(BackendRegistry& registry, TimePoint deadline,
                                              const std::set<std::string>& avoid,
                                              const std::function<bool()>& cancelled,
                                              std::uint64_t affinity_key = 0,
                                              const TenantTicket& tenant = {}) {
    std::unique_ptr<BackendRegistry::Place> place;
    auto result = registry.try_acquire(avoid, affinity_key, tenant, place);
    if (place) {
        return detail::wait_place(place, deadline, cancelled);
    }
    return result;
}

inline BackendRegistry::AcquireResult acquire_light(BackendRegistry& registry, TimePoint deadline,
                                                    const std::set<std::string>& avoid,
                                                    const std::function<bool()>& cancelled) {
    std::unique_ptr<BackendRegistry::Place> place;
    auto result = registry.try_acquire_light(avoid, place);
    if (place) {
        return detail::wait_place(place, deadline, cancelled);
    }
    return result;
}

}  // namespace llama_pool::test
