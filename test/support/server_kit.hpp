#pragma once
// What the HTTP server's own tests (pumps, deferred requests) share: a latch, a started
// server, and raw reads of what the server sends.
#include <catch2/catch.hpp>
#include <condition_variable>
#include <mutex>
#include <string>

#include "common/http_server.hpp"
#include "common/socket.hpp"
#include "test/support/test_process.hpp"

namespace llama_pool::test {

// A one-way latch: set once, waited on by the test.
class Event {
  public:
    void set() {
        {
            std::lock_guard lock(mutex_);
            set_ = true;
        }
        cv_.notify_all();
    }
    bool wait(milliseconds timeout) {
        std::unique_lock lock(mutex_);
        return cv_.wait_for(lock, timeout, [this] { return set_; });
    }
    bool is_set() {
        std::lock_guard lock(mutex_);
        return set_;
    }

  private:
    std::mutex mutex_;
    std::condition_variable cv_;
    bool set_ = false;
};

// A server started on a free port, or the test fails.
struct Started {
    HttpServer server;
    explicit Started(HttpServerOptions o, HttpHandler h) : server(std::move(o), std::move(h)) {
        std::string error;
        REQUIRE(server.start(error));
    }
};

// Everything the server sends until it closes.
inline std::string read_until_close(int fd, milliseconds timeout = std::chrono::seconds(10)) {
    std::string out;
    const auto deadline = Clock::now() + timeout;
    char buf[16384];
    while (true) {
        std::size_t n = 0;
        if (read_some(fd, buf, sizeof buf, n, deadline) != IoStatus::ok) {
            return out;
        }
        out.append(buf, n);
    }
}

// Polls a condition the server exposes as a counter (no event to wait on there).
template <typename F>
bool eventually(F condition, milliseconds timeout = std::chrono::seconds(10)) {
    return wait_until(condition, timeout, milliseconds(5));
}

}  // namespace llama_pool::test
