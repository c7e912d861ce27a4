// Requests deferred to the HTTP server's event loop (Exchange::defer with a Deferred): while
// they wait they hold no thread, their wait fd, deadline and the client's hang-up wake them,
// and once resume() says done the connection goes on (keep-alive, pipelining, a pumped body)
// as after any handler. stop() cancels what still waits. The wait fds are eventfds the test
// signals, standing in for a queue slot or a worker's reply.
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <condition_variable>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <utility>

#include "common/http_client.hpp"
#include "common/http_server.hpp"
#include "test/support/server_kit.hpp"
#include "test/support/test_process.hpp"

using namespace llama_pool;
using namespace std::chrono_literals;
using llama_pool::test::Event;
using llama_pool::test::eventually;
using llama_pool::test::read_until_close;
using llama_pool::test::Started;

namespace {

bool readable(int fd) {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, 0) > 0 && (p.revents & POLLIN) != 0;
}

// What the test sees of one deferred request.
struct Probe {
    WakeSignal signal;  // the wait fd (most kinds)
    WakeSignal second;  // the fd a `switch` deferred waits on after its first resume
    std::atomic<int> resumes{0};
    std::atomic<int> cancels{0};
    std::atomic<int> in_call{0};
    std::atomic<bool> overlapped{false};
    std::atomic<bool> resumed_after_cancel{false};
    std::atomic<bool> saw_client_gone{false};
    std::atomic<bool> deadline_passed{false};
    std::atomic<int> own_fd{-1};  // a `reuse` deferred's eventfd, for the test to signal
    // Held by the test's write to own_fd and by its replacement: TSan sees no order in an
    // eventfd's wake-up, so a write before the close would look like a race with it.
    std::mutex own_fd_mutex;
    std::atomic<bool> reused_number{false};
    Event first_resume;
    Event destroyed;
};

// A body the pump already holds in full: the writer end is closed at once, so pull() reads it
// and then the end.
class OncePump final : public BodyPump {
  public:
    explicit OncePump(std::string_view body) {
        int pair[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0) {
            source_ = Fd(pair[0]);
            Fd writer(pair[1]);
            write_all(writer.get(), body, Clock::now() + 5s);
        }
    }
    int source_fd() const override { return source_.get(); }
    Step pull(std::string& out) override {
        char buf[4096];
        while (true) {
            const auto n = ::recv(source_.get(), buf, sizeof buf, MSG_DONTWAIT);
            if (n > 0) {
                out.append(buf, static_cast<std::size_t>(n));
            } else if (n == 0) {
                return Step::finished;
            } else {
                return errno == EAGAIN || errno == EINTR ? Step::more : Step::aborted;
            }
        }
    }
    TimePoint deadline() const override { return TimePoint::max(); }
    Step on_timeout(std::string& /*out*/) override { return Step::aborted; }
    void on_client_gone() override {}

  private:
    Fd source_;
};

// signal: answers once probe.signal is set; deadline: answers once its deadline passed, with
// no wait fd; hangup: waits for the client to go; switch: waits on `signal`, then on `second`;
// reuse: waits on an eventfd of its own, which the first resume replaces by a new one with the
// same number; shared: waits on a descriptor that outlives the request (a worker connection's,
// which the next request waits on again), clearing it when woken; pump: hands a body to a pump;
// throws: resume() throws; forever: never answers.
enum class Kind { signal, deadline, hangup, switch_fd, reuse_fd, shared, pump, throws, forever };

class TestDeferred final : public Deferred {
  public:
    TestDeferred(Kind kind, std::string target, std::shared_ptr<Probe> probe, WakeSignal& shared)
        : kind_(kind), target_(std::move(target)), probe_(std::move(probe)), shared_(shared) {
        if (kind_ == Kind::reuse_fd) {
            own_ = Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
            probe_->own_fd = own_.get();
        }
    }
    ~TestDeferred() override {
        {
            const std::lock_guard lock(probe_->own_fd_mutex);  // see own_fd_mutex
            own_.reset();
        }
        probe_->destroyed.set();
    }

    int wait_fd() const override {
        switch (kind_) {
            case Kind::deadline:
                return -1;
            case Kind::switch_fd:
                return stage_ == 0 ? probe_->signal.fd() : probe_->second.fd();
            case Kind::reuse_fd:
                return own_.get();
            case Kind::shared:
                return shared_.fd();
            default:
                return probe_->signal.fd();
        }
    }
    TimePoint deadline() const override {
        return kind_ == Kind::deadline ? deadline_ : TimePoint::max();
    }
    Step resume(Exchange& exchange) override {
        const Call call(*probe_);
        ++probe_->resumes;
        if (probe_->cancels > 0) {
            probe_->resumed_after_cancel = true;
        }
        if (exchange.client_gone()) {
            probe_->saw_client_gone = true;
            exchange.abort();
            return Step::done;
        }
        switch (kind_) {
            case Kind::deadline:
                if (Clock::now() < deadline_) {
                    return Step::wait;  // a spurious wake-up
                }
                probe_->deadline_passed = true;
                return answer(exchange, "deadline passed");
            case Kind::hangup:
            case Kind::forever:
                return Step::wait;
            case Kind::switch_fd:
                if (stage_ == 0) {
                    if (!probe_->signal.notified()) {
                        return Step::wait;
                    }
                    stage_ = 1;
                    probe_->first_resume.set();
                    return Step::wait;
                }
                return probe_->second.notified() ? answer(exchange, "switched") : Step::wait;
            case Kind::reuse_fd:
                return resume_reuse(exchange);
            case Kind::shared:
                if (!shared_.notified()) {
                    return Step::wait;
                }
                shared_.clear();
                return answer(exchange, "woken " + target_);
            default:
                break;
        }
        if (!probe_->signal.notified()) {
            return Step::wait;
        }
        if (kind_ == Kind::throws) {
            throw std::runtime_error("resume failed on purpose");
        }
        if (kind_ == Kind::pump) {
            Headers headers;
            headers.add("Content-Type", "text/plain");
            if (exchange.begin(200, std::move(headers), std::nullopt)) {
                exchange.hand_off(std::make_unique<OncePump>("pumped body of " + target_));
            }
            return Step::done;
        }
        return answer(exchange, "woken " + target_);
    }
    void cancel() override {
        const Call call(*probe_);
        ++probe_->cancels;
    }

  private:
    struct Call {
        explicit Call(Probe& p) : probe(p) {
            if (probe.in_call.fetch_add(1) != 0) {
                probe.overlapped = true;
            }
        }
        ~Call() { --probe.in_call; }
        Probe& probe;
    };

    static Step answer(Exchange& exchange, const std::string& body) {
        exchange.respond(200, Headers{}, body);
        return Step::done;
    }

    Step resume_reuse(Exchange& exchange) {
        if (!readable(own_.get())) {
            return Step::wait;
        }
        if (stage_ == 1) {
            return answer(exchange, "reused");
        }
        // Closed here, and a new descriptor given the same number: the server must not take
        // the new one for the old registration.
        const std::lock_guard lock(probe_->own_fd_mutex);
        const int old_number = own_.get();
        own_.reset();
        Fd fresh(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        if (fresh.get() != old_number && ::dup2(fresh.get(), old_number) == old_number) {
            fresh = Fd(old_number);
        }
        own_ = std::move(fresh);
        probe_->reused_number = own_.get() == old_number;
        probe_->own_fd = own_.get();
        stage_ = 1;
        probe_->first_resume.set();
        return Step::wait;
    }

    Kind kind_;
    std::string target_;
    std::shared_ptr<Probe> probe_;
    TimePoint deadline_ = Clock::now() + 50ms;
    int stage_ = 0;
    Fd own_;
    WakeSignal& shared_;
};

// The probes by request target.
class Board {
  public:
    WakeSignal shared;  // the wait fd of every `shared` deferred

    void add(const std::string& target, std::shared_ptr<Probe> probe) {
        {
            std::lock_guard lock(mutex_);
            probes_[target] = std::move(probe);
        }
        cv_.notify_all();
    }
    bool wait_count(std::size_t n, milliseconds timeout = 10s) {
        std::unique_lock lock(mutex_);
        return cv_.wait_for(lock, timeout, [&] { return probes_.size() >= n; });
    }
    std::shared_ptr<Probe> probe(const std::string& target) {
        std::unique_lock lock(mutex_);
        cv_.wait_for(lock, 10s, [&] { return probes_.count(target) != 0; });
        return probes_.at(target);
    }
    std::map<std::string, std::shared_ptr<Probe>> all() {
        std::lock_guard lock(mutex_);
        return probes_;
    }

  private:
    std::mutex mutex_;
    std::condition_variable cv_;
    std::map<std::string, std::shared_ptr<Probe>> probes_;
};

HttpServerOptions test_options() {
    HttpServerOptions o;
    o.port = 0;
    o.idle_thread_timeout = 100ms;
    o.spare_threads = 2;
    return o;
}

// /<kind>/<name> defers a TestDeferred of that kind; anything else gets a plain answer. It runs
// on server threads, so it asserts nothing itself (Catch2 is not thread-safe).
HttpHandler defer_handler(Board& board) {
    static const std::map<std::string, Kind> kinds = {
        {"signal", Kind::signal},    {"deadline", Kind::deadline}, {"hangup", Kind::hangup},
        {"switch", Kind::switch_fd}, {"reuse", Kind::reuse_fd},    {"shared", Kind::shared},
        {"pump", Kind::pump},        {"throws", Kind::throws},     {"forever", Kind::forever}};
    return [&board](HttpExchange& ex) {
        const auto& target = ex.request().target;
        const auto slash = target.find('/', 1);
        const auto kind =
            slash == std::string::npos ? kinds.end() : kinds.find(target.substr(1, slash - 1));
        if (kind == kinds.end()) {
            ex.respond(200, Headers{}, "hello " + target);
            return;
        }
        auto probe = std::make_shared<Probe>();
        auto deferred = std::make_unique<TestDeferred>(kind->second, target, probe, board.shared);
        board.add(target, probe);
        if (!ex.defer(std::move(deferred))) {
            ex.respond(500, Headers{}, "defer refused");
        }
    };
}

HttpClientConnection send_get(const HttpServer& server, const std::string& target) {
    std::string error;
    auto c = HttpClientConnection::connect("127.0.0.1", server.port(), Clock::now() + 5s, error);
    REQUIRE(c.connected());
    REQUIRE(c.send_request("GET", target, "x", Headers{}, "", Clock::now() + 5s) == IoStatus::ok);
    return c;
}

// The response's status and whole body; `done` says whether the body ended cleanly.
std::string read_response(HttpClientConnection& c, int& status, bool& done) {
    HttpResponseHead head;
    std::string error;
    status = 0;
    done = false;
    std::string body;
    if (c.read_head(head, false, Clock::now() + 10s, error) != IoStatus::ok) {
        return body;
    }
    status = head.status;
    while (!done && c.read_body(body, done, Clock::now() + 10s, error) == IoStatus::ok) {
    }
    return body;
}

void signal_own_fd(Probe& probe) {
    const std::lock_guard lock(probe.own_fd_mutex);
    const std::uint64_t one = 1;
    REQUIRE(::write(probe.own_fd, &one, sizeof one) == sizeof one);
}

void check_calls(Board& board) {
    for (const auto& [target, probe] : board.all()) {
        INFO(target);
        CHECK_FALSE(probe->overlapped);
        CHECK_FALSE(probe->resumed_after_cancel);
    }
}

bool server_idle(const HttpServer& server) {
    return server.active_requests() == 0 && server.deferred() == 0;
}

}  // namespace

TEST_CASE("a deferred request woken by its wait fd answers, then its connection serves the next",
          "[http_defer]") {
    Board board;
    Started s(test_options(), defer_handler(board));
    auto c = send_get(s.server, "/signal/a");
    const auto probe = board.probe("/signal/a");
    REQUIRE(eventually([&] { return s.server.deferred() == 1; }));
    CHECK(s.server.active_requests() == 1);
    CHECK_FALSE(s.server.drain(Clock::now() + 50ms));  // a deferred request is in flight
    probe->signal.notify();
    int status = 0;
    bool done = false;
    CHECK(read_response(c, status, done) == "woken /signal/a");
    CHECK(status == 200);
    CHECK(done);
    REQUIRE(c.reusable());
    CHECK(probe->destroyed.wait(10s));
    CHECK(probe->resumes == 1);
    CHECK(probe->cancels == 0);
    REQUIRE(c.send_request("GET", "/plain", "x", Headers{}, "", Clock::now() + 5s) == IoStatus::ok);
    CHECK(read_response(c, status, done) == "hello /plain");
    CHECK(done);
    CHECK(eventually([&] { return server_idle(s.server); }));
    CHECK(s.server.drain(Clock::now() + 10s));
    check_calls(board);
}

TEST_CASE("a request pipelined behind a deferred one neither wakes it nor overtakes it",
          "[http_defer]") {
    Board board;
    Started s(test_options(), defer_handler(board));
    std::string error;
    auto c = connect_tcp("127.0.0.1", s.server.port(), Clock::now() + 5s, error);
    REQUIRE(c.valid());
    REQUIRE(write_all(c.get(),
                      "GET /signal/p HTTP/1.1\r\nHost: x\r\n\r\n"
                      "GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                      Clock::now() + 5s) == IoStatus::ok);
    const auto probe = board.probe("/signal/p");
    REQUIRE(eventually([&] { return s.server.deferred() == 1; }));
    probe->signal.notify();
    const auto answer = read_until_close(c.get());
    const auto first = answer.find("woken /signal/p");
    const auto second = answer.find("hello /after");
    CHECK(first != std::string::npos);
    CHECK(second != std::string::npos);
    CHECK(first < second);
    // Woken by its signal only: the pipelined bytes in the socket did not make it spin.
    CHECK(probe->resumes == 1);
    CHECK(eventually([&] { return server_idle(s.server); }));
}

TEST_CASE("a deferred request's deadline wakes it", "[http_defer]") {
    Board board;
    Started s(test_options(), defer_handler(board));
    auto c = send_get(s.server, "/deadline/d");
    int status = 0;
    bool done = false;
    CHECK(read_response(c, status, done) == "deadline passed");
    CHECK(status == 200);
    const auto probe = board.probe("/deadline/d");
    CHECK(probe->deadline_passed);
    CHECK(probe->destroyed.wait(10s));
    CHECK(eventually([&] { return server_idle(s.server); }));
    check_calls(board);
}

TEST_CASE("a client hanging up on a deferred request reaches resume, which ends it",
          "[http_defer]") {
    Board board;
    Started s(test_options(), defer_handler(board));
    auto c = send_get(s.server, "/hangup/h");
    const auto probe = board.probe("/hangup/h");
    REQUIRE(eventually([&] { return s.server.deferred() == 1; }));
    c = HttpClientConnection{};  // the client goes away; the wait fd says nothing
    CHECK(probe->destroyed.wait(10s));
    CHECK(probe->saw_client_gone);
    CHECK(probe->cancels == 0);
    CHECK(eventually([&] { return server_idle(s.server) && s.server.open_connections() == 0; }));
    check_calls(board);
}

TEST_CASE("a deferred request's resume can wait on another fd, even one with a closed fd's number",
          "[http_defer]") {
    Board board;
    Started s(test_options(), defer_handler(board));
    SECTION("another descriptor") {
        auto c = send_get(s.server, "/switch/s");
        const auto probe = board.probe("/switch/s");
        probe->signal.notify();
        REQUIRE(probe->first_resume.wait(10s));
        probe->second.notify();
        int status = 0;
        bool done = false;
        CHECK(read_response(c, status, done) == "switched");
        CHECK(status == 200);
    }
    SECTION("a new descriptor with the closed one's number") {
        auto c = send_get(s.server, "/reuse/r");
        const auto probe = board.probe("/reuse/r");
        signal_own_fd(*probe);
        REQUIRE(probe->first_resume.wait(10s));
        CHECK(probe->reused_number);
        signal_own_fd(*probe);
        int status = 0;
        bool done = false;
        CHECK(read_response(c, status, done) == "reused");
        CHECK(status == 200);
        CHECK(probe->resumes == 2);
    }
    CHECK(eventually([&] { return server_idle(s.server); }));
    check_calls(board);
}

// A worker connection's descriptor stays registered, disarmed, after the wake-up it gave; the
// next request that waits on it must be woken all the same.
TEST_CASE("requests one after another can wait on the same descriptor", "[http_defer]") {
    Board board;
    Started s(test_options(), defer_handler(board));
    const std::string name = "q";
    auto c = send_get(s.server, "/shared/" + name + "1");
    for (int i = 1; i <= 3; ++i) {
        const auto target = "/shared/" + name + std::to_string(i);
        INFO(target);
        if (i > 1) {
            REQUIRE(c.send_request("GET", target, "x", Headers{}, "", Clock::now() + 5s) ==
                    IoStatus::ok);
        }
        const auto probe = board.probe(target);
        REQUIRE(eventually([&] { return s.server.deferred() == 1; }));
        board.shared.notify();
        int status = 0;
        bool done = false;
        CHECK(read_response(c, status, done) == "woken " + target);
        CHECK(status == 200);
        REQUIRE(c.reusable());
        CHECK(probe->destroyed.wait(10s));
        CHECK(probe->resumes == 1);
    }
    // Another connection's request, on the same descriptor again.
    auto other = send_get(s.server, "/shared/" + name + "other");
    REQUIRE(eventually([&] { return s.server.deferred() == 1; }));
    board.shared.notify();
    int status = 0;
    bool done = false;
    CHECK(read_response(other, status, done) == "woken /shared/" + name + "other");
    CHECK(eventually([&] { return server_idle(s.server); }));
    check_calls(board);
}

TEST_CASE("a resumed deferred request can hand its body to a pump", "[http_defer]") {
    Board board;
    Started s(test_options(), defer_handler(board));
    auto c = send_get(s.server, "/pump/b");
    board.probe("/pump/b")->signal.notify();
    int status = 0;
    bool done = false;
    CHECK(read_response(c, status, done) == "pumped body of /pump/b");
    CHECK(status == 200);
    CHECK(done);
    CHECK(c.reusable());
    CHECK(eventually([&] { return server_idle(s.server) && s.server.pumps() == 0; }));
}

TEST_CASE("an exception thrown in a deferred request's resume answers 500", "[http_defer]") {
    Board board;
    Started s(test_options(), defer_handler(board));
    auto c = send_get(s.server, "/throws/x");
    board.probe("/throws/x")->signal.notify();
    int status = 0;
    bool done = false;
    const auto body = read_response(c, status, done);
    CHECK(status == 500);
    CHECK(body.find("resume failed on purpose") != std::string::npos);
    CHECK(eventually([&] { return server_idle(s.server); }));
}

TEST_CASE("stop cancels every waiting deferred once, resumes none after, and closes its client",
          "[http_defer]") {
    constexpr int kRequests = 20;
    Board board;
    Started s(test_options(), defer_handler(board));
    std::vector<HttpClientConnection> clients;
    for (int i = 0; i < kRequests; ++i) {
        clients.push_back(send_get(s.server, "/forever/" + std::to_string(i)));
    }
    REQUIRE(board.wait_count(kRequests));
    REQUIRE(eventually([&] { return s.server.deferred() == kRequests; }));
    // Half of them woken just before the stop: a resume may be running while stop() cancels.
    const auto probes = board.all();
    int i = 0;
    for (const auto& [target, probe] : probes) {
        if (i++ % 2 == 0) {
            probe->signal.notify();
        }
    }
    s.server.stop();
    CHECK(s.server.thread_count() == 0);
    CHECK(s.server.deferred() == 0);
    CHECK(s.server.active_requests() == 0);
    CHECK(s.server.open_connections() == 0);
    for (const auto& [target, probe] : probes) {
        INFO(target);
        CHECK(probe->cancels == 1);
        CHECK_FALSE(probe->resumed_after_cancel);
        CHECK_FALSE(probe->overlapped);
        CHECK(probe->destroyed.is_set());
    }
    for (auto& c : clients) {
        CHECK(read_until_close(c.fd()).empty());  // cut without an answer
    }
}

TEST_CASE("500 deferred requests wait without a thread each", "[http_defer]") {
    const auto limit = raise_fd_limit();
    // Each request costs four descriptors here: client, server side, and two eventfds.
    if (limit.after < 2200) {
        WARN("skipped: the open-file limit is " << limit.after);
        return;
    }
    constexpr std::size_t kRequests = 500;
    auto o = test_options();
    o.max_connections = 2 * kRequests;
    Board board;
    Started s(o, defer_handler(board));
    std::vector<HttpClientConnection> clients;
    std::size_t most_threads = 0;
    for (std::size_t i = 0; i < kRequests; ++i) {
        clients.push_back(send_get(s.server, "/signal/" + std::to_string(i)));
        // One at a time: a burst of new connections costs threads of its own (each waits a
        // moment for its request), which is not what this test is about.
        REQUIRE(board.wait_count(i + 1));
        most_threads = std::max(most_threads, s.server.thread_count());
    }
    REQUIRE(eventually([&] { return s.server.deferred() == kRequests; }));
    CHECK(s.server.active_requests() == kRequests);
    most_threads = std::max(most_threads, s.server.thread_count());
    // The property issue 18 asks for: not a thread per request in flight; and with all of
    // them waiting, the threads retire down to the spares.
    CHECK(most_threads <= 32);
    CHECK(eventually([&] { return s.server.thread_count() <= o.spare_threads + 2; }));
    CHECK(s.server.deferred() == kRequests);
    for (std::size_t i = 0; i < kRequests; ++i) {
        board.probe("/signal/" + std::to_string(i))->signal.notify();
    }
    for (std::size_t i = 0; i < kRequests; ++i) {
        int status = 0;
        bool done = false;
        CHECK(read_response(clients[i], status, done) == "woken /signal/" + std::to_string(i));
        CHECK(done);
    }
    CHECK(eventually([&] { return server_idle(s.server); }));
    check_calls(board);
}
