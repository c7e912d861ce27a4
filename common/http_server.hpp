#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.hpp"
#include "common/exchange.hpp"
#include "common/http_message.hpp"
#include "common/http_parser.hpp"
#include "common/socket.hpp"

namespace llama_pool {

struct HttpServerOptions {
    std::string host = "127.0.0.1";
    std::uint16_t port = 8081;  // 0 picks a free port; see HttpServer::port()
    HeadLimits head_limits;
    std::size_t max_body_bytes = 32 * 1024 * 1024;
    // Whole-head and whole-body deadlines, not per-read timeouts: a client dribbling one
    // byte a second is cut off as surely as a silent one (slowloris).
    milliseconds head_timeout{10'000};
    milliseconds body_timeout{60'000};
    milliseconds keep_alive_timeout{60'000};
    // A single write blocked this long means the client stopped reading.
    milliseconds write_timeout{60'000};
    std::size_t max_connections = 1024;
};

// One request on one connection, handed to the handler. The handler answers either with
// respond() or with begin()/write()/finish() for a streamed body. Not thread-safe: used
// only by the connection's own thread.
class HttpExchange final : public Exchange {
  public:
    const HttpRequest& request() const override { return request_; }
    HttpRequest& request() { return request_; }
    const std::string& remote_address() const override { return remote_; }

    bool respond(int status, Headers headers, std::string_view body) override;
    // With no content length the body is sent chunked (or until close for HTTP/1.0).
    bool begin(int status, Headers headers, std::optional<std::size_t> content_length) override;
    bool write(std::string_view data) override;
    bool finish() override;
    // The connection is closed after it, so the client sees a truncated response.
    void abort() override { broken_ = true; }
    // Raw bytes on the wire, for test doubles that must misbehave on purpose.
    bool write_raw(std::string_view bytes);
    void close_after_response() { close_after_ = true; }

    bool responded() const override { return head_sent_; }
    int response_status() const override { return status_; }
    bool finished() const { return finished_; }
    bool client_gone() const override;
    int client_fd() const { return fd_; }
    // The server's shutdown signal and this client's hang-up.
    IoWatch watch() const override { return {hard_wake_fd_, fd_}; }

  private:
    friend class HttpServer;
    HttpExchange(int fd, int hard_wake_fd, std::string remote, milliseconds write_timeout)
        : fd_(fd),
          hard_wake_fd_(hard_wake_fd),
          remote_(std::move(remote)),
          write_timeout_(write_timeout) {}
    bool send(std::string_view bytes);

    int fd_;
    int hard_wake_fd_;
    std::string remote_;
    milliseconds write_timeout_;
    HttpRequest request_;
    bool head_sent_ = false;
    int status_ = 0;
    bool chunked_ = false;
    bool finished_ = false;
    bool broken_ = false;
    bool close_after_ = false;
    std::optional<std::size_t> length_left_;
    std::string pending_head_;
};

using HttpHandler = std::function<void(HttpExchange&)>;

// HTTP/1.1 server, one thread per connection. Every thread is owned by the server and joined
// by stop(). Lifecycle: start() once, then optionally stop_accepting() and drain(), then
// stop(); the destructor calls stop().
class HttpServer {
  public:
    HttpServer(HttpServerOptions options, HttpHandler handler);
    ~HttpServer();
    HttpServer(const HttpServer&) = delete;
    HttpServer& operator=(const HttpServer&) = delete;

    // Binds and starts accepting. Returns false with `error` set when binding fails.
    bool start(std::string& error);
    std::uint16_t port() const { return port_; }

    // Stops accepting new connections and closes idle keep-alive ones; requests already
    // being served go on.
    void stop_accepting();
    // Waits until no request is being served or the deadline passes. True when idle.
    bool drain(TimePoint deadline);
    // Aborts whatever is still running and joins every thread.
    void stop();
    // Aborts running requests without joining; safe from any thread, e.g. while another
    // thread is blocked in drain().
    void abort() {
        stop_accepting();
        hard_wake_.notify();
    }

    std::size_t open_connections() const;
    std::size_t active_requests() const { return active_requests_.load(); }
    // Connections refused at accept time: over max_connections, or out of descriptors.
    std::uint64_t refused_connections() const { return refused_connections_.load(); }

  private:
    struct Connection {
        std::thread thread;
        int fd = -1;
    };
    void accept_loop();
    void serve_connection(std::uint64_t id, Fd fd);
    void reap_finished_locked(std::vector<std::thread>& to_join);
    bool read_request(Fd& fd, std::string& buffer, HttpRequest& request, bool first,
                      int& error_status, std::string& error);
    void send_error(int fd, int status, std::string_view message);
    // Answers a connection we will not serve with a 503 and closes it without a reset.
    void refuse(int fd, std::string_view message);
    // Out of descriptors: takes one pending connection with the reserve descriptor and
    // refuses it, instead of leaving it hanging in the backlog (and the accept loop spinning).
    void shed_pending_connection();

    HttpServerOptions options_;
    HttpHandler handler_;
    Fd listener_;
    Fd reserve_fd_;  // given up for a moment when the process runs out of descriptors
    std::uint16_t port_ = 0;
    WakeSignal accept_wake_;  // stops the accept loop
    WakeSignal idle_wake_;    // closes connections waiting for their next request
    WakeSignal hard_wake_;    // aborts in-flight work at final stop
    std::thread accept_thread_;

    mutable std::mutex mutex_;
    std::condition_variable idle_cv_;
    std::map<std::uint64_t, Connection> connections_;
    std::vector<std::uint64_t> finished_;
    std::uint64_t next_id_ = 0;
    std::atomic<std::size_t> active_requests_{0};
    std::atomic<std::uint64_t> refused_connections_{0};
    std::atomic<bool> accepting_{false};
    bool stopped_ = false;
};

}  // namespace llama_pool
