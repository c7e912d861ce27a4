#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "common/http_client.hpp"

namespace llama_pool {

// Keep-alive connections to one backend. Connections are taken for one exchange and given
// back only when the response was read completely; since the registry never leases more
// requests than the backend's capacity, the pool never holds more connections than that.
class UpstreamPool {
  public:
    // A connection given back this recently is taken without the staleness check (a poll(),
    // one system call in each of the ~12 a relayed request costs). Servers close idle
    // keep-alive connections after seconds (cpp-httplib, llama-server's, after 5 s; nginx
    // after 75 s), so one idle for less than this was not closed by a keep-alive timer. A
    // worker that died meanwhile is noticed as before, when its connection fails before any
    // reply byte: the relay tries once more on a new connection (`reused`, below).
    static constexpr Duration kTrustedIdle = std::chrono::seconds(1);

    UpstreamPool(std::string host, std::uint16_t port, std::size_t max_idle)
        : host_(std::move(host)), port_(port), max_idle_(max_idle) {}

    // An idle connection when one is still good, else a new one (`reused` tells which: a
    // reused connection that fails before any reply byte may just have been closed by the
    // server's keep-alive timer, and deserves an immediate second try, on a new connection:
    // `reuse` false). `now` is the caller's clock, the one give_back() was told.
    HttpClientConnection take(TimePoint now, TimePoint connect_deadline, bool& reused,
                              std::string& error, bool reuse = true);
    void give_back(HttpClientConnection connection, TimePoint now);

    std::uint64_t connections_opened() const { return opened_.load(); }
    std::size_t idle_count() const;
    const std::string& host() const { return host_; }
    std::uint16_t port() const { return port_; }

  private:
    struct Idle {
        HttpClientConnection conn;
        TimePoint since;
    };
    std::string host_;
    std::uint16_t port_;
    std::size_t max_idle_;
    mutable std::mutex mutex_;
    std::vector<Idle> idle_;  // the most recently given back last
    std::atomic<std::uint64_t> opened_{0};
};

}  // namespace llama_pool
