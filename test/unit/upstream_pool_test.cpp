#include "proxy/upstream_pool.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <string>

using namespace llama_pool;

namespace {

// One answered request on a pooled connection, so that it counts as reusable; `server` is the
// accepted end, which the test closes to make the pooled connection stale.
struct Answered {
    HttpClientConnection conn;
    Fd server;
};

Answered answered_request(UpstreamPool& pool, int listener, TimePoint now) {
    Answered out;
    bool reused = true;
    std::string error;
    out.conn = pool.take(now, Clock::now() + seconds(5), reused, error);
    REQUIRE(out.conn.connected());
    CHECK_FALSE(reused);
    out.server = Fd(::accept(listener, nullptr, nullptr));
    REQUIRE(out.server.valid());
    REQUIRE(out.conn.send_request("GET", "/health", "127.0.0.1", Headers{}, "",
                                  Clock::now() + seconds(5)) == IoStatus::ok);
    char buf[1024];
    REQUIRE(::recv(out.server.get(), buf, sizeof buf, 0) > 0);
    const std::string reply = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    REQUIRE(::send(out.server.get(), reply.data(), reply.size(), MSG_NOSIGNAL) ==
            static_cast<ssize_t>(reply.size()));
    HttpResponseHead head;
    REQUIRE(out.conn.read_head(head, false, Clock::now() + seconds(5), error) == IoStatus::ok);
    std::string body;
    bool done = false;
    while (!done) {
        REQUIRE(out.conn.read_body(body, done, Clock::now() + seconds(5), error) == IoStatus::ok);
    }
    REQUIRE(out.conn.reusable());
    return out;
}

// Waits (on the descriptor, not a clock) until the client end has seen the server's close.
void wait_for_close(int fd) {
    pollfd p{fd, POLLRDHUP, 0};
    REQUIRE(::poll(&p, 1, 5000) == 1);
}

}  // namespace

TEST_CASE("a connection given back moments ago is reused unchecked, an older one is checked",
          "[upstream_pool]") {
    std::string error;
    const auto listener = listen_tcp("127.0.0.1", 0, 16, error);
    REQUIRE(listener.valid());
    UpstreamPool pool("127.0.0.1", local_port(listener.get()), 4);
    const TimePoint t0{seconds(1000)};  // the caller's clock: only differences matter
    bool reused = false;

    auto first = answered_request(pool, listener.get(), t0);
    const int fd = first.conn.fd();
    pool.give_back(std::move(first.conn), t0);
    first.server.reset();  // the worker closes it: the pooled connection is stale now
    {
        // Still taken (the relay's retry on a new connection covers the rare stale one).
        auto conn = pool.take(t0 + UpstreamPool::kTrustedIdle - milliseconds(1), t0, reused, error);
        CHECK(reused);
        CHECK(conn.fd() == fd);
        wait_for_close(conn.fd());
        pool.give_back(std::move(conn), t0);
    }
    // Idle for kTrustedIdle: checked, found closed, and replaced by a new connection.
    auto conn =
        pool.take(t0 + UpstreamPool::kTrustedIdle, Clock::now() + seconds(5), reused, error);
    CHECK(conn.connected());
    CHECK_FALSE(reused);
    CHECK(pool.connections_opened() == 2);
    CHECK(pool.idle_count() == 0);
}

TEST_CASE("an idle connection still open is reused after any idle time", "[upstream_pool]") {
    std::string error;
    const auto listener = listen_tcp("127.0.0.1", 0, 16, error);
    REQUIRE(listener.valid());
    UpstreamPool pool("127.0.0.1", local_port(listener.get()), 4);
    const TimePoint t0{seconds(1000)};
    auto first = answered_request(pool, listener.get(), t0);
    const int fd = first.conn.fd();
    pool.give_back(std::move(first.conn), t0);
    bool reused = false;
    auto conn = pool.take(t0 + seconds(60), Clock::now() + seconds(5), reused, error);
    CHECK(reused);
    CHECK(conn.fd() == fd);
    CHECK(pool.connections_opened() == 1);
}
