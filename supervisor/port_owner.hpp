#pragma once

#include <sys/types.h>

#include <cstdint>

namespace llama_pool {

// Whether the process `pid` holds the listening TCP socket on `port` (looked up through
// /proc/net/tcp{,6} and /proc/PID/fd). Used to verify that a worker's port is served by that
// worker, not by some other process that took the port first.
bool process_listens_on(pid_t pid, std::uint16_t port);

}  // namespace llama_pool
