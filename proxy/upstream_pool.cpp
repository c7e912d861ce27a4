#include "proxy/upstream_pool.hpp"

namespace llama_pool {

HttpClientConnection UpstreamPool::take(TimePoint connect_deadline, bool& reused,
                                        std::string& error, bool reuse) {
    if (reuse) {
        std::lock_guard lock(mutex_);
        while (!idle_.empty()) {
            auto conn = std::move(idle_.back());
            idle_.pop_back();
            if (!conn.stale()) {
                reused = true;
                return conn;
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
        idle_.push_back(std::move(connection));
    }
}

std::size_t UpstreamPool::idle_count() const {
    std::lock_guard lock(mutex_);
    return idle_.size();
}

}  // namespace llama_pool
