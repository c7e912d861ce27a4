#include "proxy/upstream_pool.hpp"

namespace llama_pool {

HttpClientConnection UpstreamPool::take(TimePoint now, TimePoint connect_deadline, bool& reused,
                                        std::string& error, bool reuse) {
    while (reuse) {
        Idle idle;
        {
            std::lock_guard lock(mutex_);
            if (idle_.empty()) {
                break;
            }
            idle = std::move(idle_.back());
            idle_.pop_back();
        }
        // The staleness check is a poll(): outside the lock, or every request to this worker
        // queues behind it (the profile at 64 connections put 40% of the proxy's futex calls
        // here when it was inside).
        if (now - idle.since < kTrustedIdle || !idle.conn.stale()) {
            reused = true;
            return std::move(idle.conn);
        }
    }
    reused = false;
    auto conn = HttpClientConnection::connect(host_, port_, connect_deadline, error);
    if (conn.connected()) {
        ++opened_;
    }
    return conn;
}

void UpstreamPool::give_back(HttpClientConnection connection, TimePoint now) {
    if (!connection.connected() || !connection.reusable()) {
        return;
    }
    std::lock_guard lock(mutex_);
    if (idle_.size() < max_idle_) {
        idle_.push_back({std::move(connection), now});
    }
}

std::size_t UpstreamPool::idle_count() const {
    std::lock_guard lock(mutex_);
    return idle_.size();
}

}  // namespace llama_pool
