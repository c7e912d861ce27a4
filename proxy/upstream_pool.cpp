#include "proxy/upstream_pool.hpp"

namespace llama_pool {

HttpClientConnection UpstreamPool::take(TimePoint connect_deadline, bool& reused,
                                        std::string& error) {
    {
        std::lock_guard lock(mutex_);
        while (!idle_.empty()) {
            auto idle = std::move(idle_.back());
            idle_.pop_back();
            // A connection given back within the last second is not polled for a close
            // first (a syscall per request): no server closes keep-alive connections that
            // fast, and the relay retries a reused connection that fails before any reply
            // byte on a fresh one anyway.
            if (Clock::now() - idle.since < seconds(1) || !idle.connection.stale()) {
                reused = true;
                return std::move(idle.connection);
            }
        }
    }
    reused = false;
    auto conn = HttpClientConnection::connect(host_, port_, connect_deadline, error);
    if (conn.connected()) {
        ++opened_;
    }
    return conn;
}

void UpstreamPool::give_back(HttpClientConnection connection) {
    if (!connection.connected() || !connection.reusable()) {
        return;
    }
    std::lock_guard lock(mutex_);
    if (idle_.size() < max_idle_) {
        idle_.push_back({std::move(connection), Clock::now()});
    }
}

std::size_t UpstreamPool::idle_count() const {
    std::lock_guard lock(mutex_);
    return idle_.size();
}

}  // namespace llama_pool
