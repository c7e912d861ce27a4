// The HTTP server in-process on loopback: idle connections wait in epoll instead of holding a
// thread, threads are reused across connections, and the timeouts, the connection limit and
// the drain/stop semantics hold as before.
#include "common/http_server.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <thread>
#include <vector>

#include "common/http_client.hpp"

using namespace llama_pool;
using namespace std::chrono_literals;

namespace {

// Polls `condition` until it holds or `timeout` passes.
template <typename F>
bool eventually(F condition, milliseconds timeout = 5000ms) {
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
        if (condition()) {
            return true;
        }
        std::this_thread::sleep_for(5ms);
    }
    return condition();
}

std::size_t process_threads() {
    std::size_t n = 0;
    for ([[maybe_unused]] const auto& entry :
         std::filesystem::directory_iterator("/proc/self/task")) {
        ++n;
    }
    return n;
}

HttpServerOptions test_options() {
    HttpServerOptions o;
    o.port = 0;
    o.idle_thread_timeout = 100ms;
    o.spare_threads = 2;
    return o;
}

void hello(HttpExchange& ex) {
    Headers headers;
    headers.add("Content-Type", "text/plain");
    ex.respond(200, std::move(headers), "hello " + ex.request().target);
}

struct Started {
    HttpServer server;
    explicit Started(HttpServerOptions o, HttpHandler h = hello)
        : server(std::move(o), std::move(h)) {
        std::string error;
        REQUIRE(server.start(error));
    }
};

HttpClientConnection connect_to(const HttpServer& server) {
    std::string error;
    auto c = HttpClientConnection::connect("127.0.0.1", server.port(), Clock::now() + 2s, error);
    REQUIRE(c.connected());
    return c;
}

struct Reply {
    int status = 0;
    std::string body;
    bool keep_alive = false;
};

Reply get(HttpClientConnection& c, const std::string& target, bool close = false) {
    Headers headers;
    if (close) {
        headers.add("Connection", "close");
    }
    const auto deadline = Clock::now() + 5s;
    Reply r;
    if (c.send_request("GET", target, "x", headers, "", deadline) != IoStatus::ok) {
        return r;
    }
    HttpResponseHead head;
    std::string error;
    if (c.read_head(head, false, deadline, error) != IoStatus::ok) {
        return r;
    }
    bool done = false;
    while (!done) {
        if (c.read_body(r.body, done, deadline, error) != IoStatus::ok) {
            return r;
        }
    }
    r.status = head.status;
    r.keep_alive = c.reusable();
    return r;
}

// Everything the server sends until it closes (or `timeout`).
std::string read_until_close(int fd, milliseconds timeout) {
    std::string out;
    const auto deadline = Clock::now() + timeout;
    char buf[4096];
    while (true) {
        std::size_t n = 0;
        if (read_some(fd, buf, sizeof buf, n, deadline) != IoStatus::ok) {
            return out;
        }
        out.append(buf, n);
    }
}

}  // namespace

TEST_CASE("idle keep-alive connections hold no thread, and wake up when a request comes",
          "[http_server]") {
    const auto threads_before = process_threads();
    Started s(test_options());
    std::vector<HttpClientConnection> clients;
    for (int i = 0; i < 200; ++i) {
        clients.push_back(connect_to(s.server));
        const auto r = get(clients.back(), "/first");
        REQUIRE(r.status == 200);
        REQUIRE(r.keep_alive);
    }
    CHECK(s.server.open_connections() == 200);
    // Once their linger is over the connections wait in epoll, and the surplus threads retire.
    CHECK(eventually([&] { return s.server.thread_count() <= 3; }));
    // Seen from the kernel too (with room for a sanitizer's own threads): not one per client.
    CHECK(process_threads() <= threads_before + 10);
    // Every parked connection is served again on its next request.
    for (auto& c : clients) {
        const auto r = get(c, "/second");
        CHECK(r.status == 200);
        CHECK(r.body == "hello /second");
    }
    CHECK(s.server.open_connections() == 200);
}

TEST_CASE("sequential Connection: close clients reuse the server's threads", "[http_server]") {
    auto o = test_options();
    o.idle_thread_timeout = 10s;  // no thread retires (and is replaced) during the test
    Started s(o);
    for (int i = 0; i < 300; ++i) {
        auto c = connect_to(s.server);
        const auto r = get(c, "/x", true);
        REQUIRE(r.status == 200);
        REQUIRE_FALSE(r.keep_alive);
    }
    // One thread per connection would have started 300. A new thread starts only when a
    // connection arrives before the previous one's thread is back waiting, which a loaded
    // machine makes happen now and then.
    CHECK(s.server.threads_started() <= 20);
    CHECK(eventually([&] { return s.server.open_connections() == 0; }));
}

TEST_CASE("a silent new connection gets 408 and an idle keep-alive one is closed quietly",
          "[http_server]") {
    auto o = test_options();
    o.head_timeout = 200ms;
    o.keep_alive_timeout = 300ms;
    Started s(o);

    auto silent = connect_to(s.server);
    auto t0 = Clock::now();
    const auto answer = read_until_close(silent.fd(), 3s);
    CHECK(Clock::now() - t0 >= 150ms);
    CHECK(answer.rfind("HTTP/1.1 408 ", 0) == 0);
    CHECK(answer.find("no request received in time") != std::string::npos);

    auto idle = connect_to(s.server);
    REQUIRE(get(idle, "/once").status == 200);
    t0 = Clock::now();
    CHECK(read_until_close(idle.fd(), 3s).empty());
    CHECK(Clock::now() - t0 >= 250ms);
    CHECK(eventually([&] { return s.server.open_connections() == 0; }));
}

TEST_CASE("a slow head still gets 408 once its first bytes came", "[http_server]") {
    auto o = test_options();
    o.head_timeout = 200ms;
    Started s(o);
    auto c = connect_to(s.server);
    REQUIRE(write_all(c.fd(), "GET / HTTP/1.1\r\nHost: x\r\n", Clock::now() + 1s) == IoStatus::ok);
    const auto answer = read_until_close(c.fd(), 3s);
    CHECK(answer.rfind("HTTP/1.1 408 ", 0) == 0);
    CHECK(answer.find("request head not received in time") != std::string::npos);
}

TEST_CASE("pipelined requests are answered in order", "[http_server]") {
    Started s(test_options());
    auto c = connect_to(s.server);
    REQUIRE(write_all(c.fd(),
                      "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n"
                      "Connection: close\r\n\r\n",
                      Clock::now() + 1s) == IoStatus::ok);
    const auto answer = read_until_close(c.fd(), 3s);
    const auto a = answer.find("hello /a");
    const auto b = answer.find("hello /b");
    CHECK(a != std::string::npos);
    CHECK(b != std::string::npos);
    CHECK(a < b);
}

TEST_CASE("over max_connections a client gets 503, and a freed place is taken again",
          "[http_server]") {
    auto o = test_options();
    o.max_connections = 3;
    Started s(o);
    std::vector<HttpClientConnection> held;
    for (int i = 0; i < 3; ++i) {
        held.push_back(connect_to(s.server));
        REQUIRE(get(held.back(), "/held").status == 200);
    }
    auto extra = connect_to(s.server);
    const auto answer = read_until_close(extra.fd(), 3s);
    CHECK(answer.rfind("HTTP/1.1 503 ", 0) == 0);
    CHECK(answer.find("too many open connections") != std::string::npos);

    held.pop_back();  // the client closes one of its idle connections
    REQUIRE(eventually([&] { return s.server.open_connections() == 2; }));
    auto again = connect_to(s.server);
    CHECK(get(again, "/again").status == 200);
}

TEST_CASE("stop_accepting closes idle connections and lets a running request finish, stop joins",
          "[http_server]") {
    std::mutex m;
    std::condition_variable cv;
    bool release = false;
    bool entered = false;
    Started s(test_options(), [&](HttpExchange& ex) {
        if (ex.request().target == "/slow") {
            std::unique_lock lock(m);
            entered = true;
            cv.notify_all();
            cv.wait(lock, [&] { return release; });
        }
        hello(ex);
    });
    auto idle = connect_to(s.server);
    REQUIRE(get(idle, "/idle").status == 200);

    auto busy = connect_to(s.server);
    Reply slow;
    std::thread client([&] { slow = get(busy, "/slow"); });
    {
        std::unique_lock lock(m);
        REQUIRE(cv.wait_for(lock, 5s, [&] { return entered; }));
    }
    s.server.stop_accepting();
    CHECK(read_until_close(idle.fd(), 3s).empty());  // closed without a word
    CHECK(eventually([&] {
        std::string error;
        return !connect_tcp("127.0.0.1", s.server.port(), Clock::now() + 1s, error).valid();
    }));
    CHECK_FALSE(s.server.drain(Clock::now() + 50ms));
    {
        std::lock_guard lock(m);
        release = true;
    }
    cv.notify_all();
    client.join();
    CHECK(slow.status == 200);
    CHECK_FALSE(slow.keep_alive);  // no new requests once the server stops accepting
    CHECK(s.server.drain(Clock::now() + 5s));
    s.server.stop();
    CHECK(s.server.thread_count() == 0);
    CHECK(s.server.open_connections() == 0);
}

TEST_CASE("stop aborts a request blocked on I/O and joins every thread", "[http_server]") {
    int pair[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0);
    Fd quiet(pair[0]), other_end(pair[1]);
    std::atomic<bool> woken{false};
    Started s(test_options(), [&](HttpExchange& ex) {
        // Blocks on a socket nobody writes to, watching what a relay watches.
        char c;
        std::size_t n = 0;
        const auto st = read_some(quiet.get(), &c, 1, n, Clock::now() + 60s, ex.watch());
        woken = st == IoStatus::woken;
        ex.abort();
    });
    auto c = connect_to(s.server);
    Headers none;
    REQUIRE(c.send_request("GET", "/block", "x", none, "", Clock::now() + 1s) == IoStatus::ok);
    REQUIRE(eventually([&] { return s.server.active_requests() == 1; }));
    const auto t0 = Clock::now();
    s.server.stop();
    CHECK(Clock::now() - t0 < 2s);
    CHECK(woken);
    CHECK(s.server.thread_count() == 0);
}

TEST_CASE("accepted connections have TCP_NODELAY, inherited from the listener", "[http_server]") {
    Started s(test_options(), [](HttpExchange& ex) {
        int on = 0;
        socklen_t len = sizeof on;
        ::getsockopt(ex.client_fd(), IPPROTO_TCP, TCP_NODELAY, &on, &len);
        ex.respond(200, Headers{}, on ? "nodelay" : "nagle");
    });
    auto c = connect_to(s.server);
    CHECK(get(c, "/").body == "nodelay");
}

TEST_CASE("RFC 9110 §8.6: a 204 carries no Content-Length and keeps the connection",
          "[http_server][rfc9112]") {
    Started s(test_options(), [](HttpExchange& ex) {
        if (ex.request().target == "/204") {
            ex.respond(204, Headers{}, "");
        } else {
            hello(ex);
        }
    });
    auto c = connect_to(s.server);
    const auto deadline = Clock::now() + 5s;
    REQUIRE(write_all(c.fd(),
                      "GET /204 HTTP/1.1\r\nHost: x\r\n\r\n"
                      "GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                      deadline) == IoStatus::ok);
    const auto raw = read_until_close(c.fd(), 5s);
    INFO(raw);
    const auto second = raw.find("HTTP/1.1 200");
    REQUIRE(raw.rfind("HTTP/1.1 204", 0) == 0);
    REQUIRE(second != std::string::npos);
    const auto first = raw.substr(0, second);
    CHECK(first.find("Content-Length") == std::string::npos);
    CHECK(first.find("Transfer-Encoding") == std::string::npos);
    CHECK(first.find("Connection: keep-alive") != std::string::npos);
    CHECK(raw.find("hello /after") != std::string::npos);
}

TEST_CASE("a handler that blocks every eager thread does not stop the server", "[http_server]") {
    auto o = test_options();
    o.spare_threads = 1;
    o.eager_threads = 1;  // the first thread that takes work leaves nobody in epoll
    o.busy_grace = 2ms;
    std::mutex mutex;
    std::condition_variable cv;
    bool entered = false;
    bool released = false;
    Started s(o, [&](HttpExchange& ex) {
        if (ex.request().target == "/block") {
            std::unique_lock lock(mutex);
            entered = true;
            cv.notify_all();
            cv.wait_for(lock, 10s, [&] { return released; });
        }
        hello(ex);
    });
    Reply blocked;
    const auto port = s.server.port();
    std::thread client([&blocked, port] {  // no Catch assertion off the test's thread
        std::string error;
        auto c = HttpClientConnection::connect("127.0.0.1", port, Clock::now() + 5s, error);
        if (c.connected()) {
            blocked = get(c, "/block");
        }
    });
    {
        std::unique_lock lock(mutex);
        REQUIRE(cv.wait_for(lock, 5s, [&] { return entered; }));
    }
    // The only eager thread is stuck in the handler: the next connection is served by a
    // thread started after busy_grace, while the first request still blocks.
    auto c = connect_to(s.server);
    const auto r = get(c, "/next");
    CHECK(r.status == 200);
    CHECK(r.body == "hello /next");
    {
        std::lock_guard lock(mutex);
        CHECK_FALSE(released);
        released = true;
    }
    cv.notify_all();
    client.join();
    CHECK(blocked.status == 200);
    CHECK(s.server.threads_started() >= 2);
}

TEST_CASE("many keep-alive clients with quick requests share a few threads", "[http_server]") {
    auto o = test_options();
    o.eager_threads = 2;
    constexpr int kClients = 32;
    constexpr int kRequests = 50;
    Started s(o);
    std::atomic<int> answered{0};
    std::vector<std::thread> clients;
    for (int i = 0; i < kClients; ++i) {
        clients.emplace_back([&answered, port = s.server.port()] {
            // No Catch assertion off the test's thread: a failure shows in `answered`.
            std::string error;
            auto c = HttpClientConnection::connect("127.0.0.1", port, Clock::now() + 5s, error);
            for (int k = 0; k < kRequests && c.connected(); ++k) {
                if (get(c, "/q").status == 200) {
                    ++answered;
                }
            }
        });
    }
    for (auto& t : clients) {
        t.join();
    }
    CHECK(answered == kClients * kRequests);
    // A thread per busy connection would have started about one per client. Threads beyond
    // the two eager ones start only when both stay busy for busy_grace, which a loaded
    // machine makes happen now and then.
    INFO("threads started: " << s.server.threads_started());
    CHECK(s.server.threads_started() <= kClients / 2);
}
