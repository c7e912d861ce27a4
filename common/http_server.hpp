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
    // Connections held at once (idle keep-alive ones included); one more gets a 503.
    std::size_t max_connections = 1024;
    // After a response, the connection's thread waits this long for the next request before
    // handing the idle connection to the poller. 0 (the default): at once. A linger holds a
    // thread per busy keep-alive connection, which eager_threads (below) would then have to
    // start beyond the cores. The two together, measured 2026-11-30 at 64 connections: p99
    // 4.7 ms instead of 8 to 10 (docs/ARCHITECTURE.md, "How many threads"); at one
    // connection no difference.
    milliseconds keep_alive_linger{0};
    // A thread idle this long exits, unless it would leave fewer than `spare_threads` idle.
    // Taking only pump steps (BodyPump), which last microseconds, counts as idle.
    milliseconds idle_thread_timeout{10'000};
    std::size_t spare_threads = 4;
    // When a thread takes work and none is left waiting in epoll, another is started at once
    // while there are fewer than this many (0: the machine's cores). Beyond that, one is
    // started only when no thread has come back to epoll for `busy_grace`: a handler that
    // blocks (a slow client's body, an in-process wait) still gets company, while event steps
    // of microseconds share a few threads instead of waking a new one for each event. More
    // busy threads than cores only preempt one another, often while holding a lock: on 2
    // cores, /tokenize through the pool at 16 connections reached 0.76 to 0.82 of nginx with
    // 2 eager threads against 0.69 to 0.74 with 4 (three rounds each, 2026-11-30).
    std::size_t eager_threads = 0;
    milliseconds busy_grace{2};
    // Bytes of a handed-off body (BodyPump) the client has not taken yet, over which its source
    // is no longer read: a slow reader cannot make the server buffer a whole generation.
    std::size_t pump_buffer_bytes = 64 * 1024;
};

// How a response body goes on the wire: chunks, a Content-Length's worth (bytes beyond it are
// dropped), or plain bytes ended by the close (HTTP/1.0).
struct BodyEncoder {
    bool chunked = false;
    std::optional<std::size_t> length_left;
    void encode(std::string_view data, std::string& out);
    // Appends the end of the body (the last chunk). False when the body is short of its
    // Content-Length: only closing the connection is honest then.
    bool end(std::string& out) const;
};

// One request on one connection, handed to the handler. The handler answers either with
// respond() or with begin()/write()/finish() for a streamed body. Not thread-safe: used
// by one thread at a time (the connection's, or the one resuming its Deferred).
class HttpExchange final : public Exchange {
  public:
    // Only the server makes exchanges (on the heap: a deferred one outlives serve()'s frame).
    class Key {
        friend class HttpServer;
        Key() = default;
    };
    HttpExchange(Key /*key*/, int fd, int hard_wake_fd, std::string remote,
                 milliseconds write_timeout, const std::atomic<bool>& accepting)
        : fd_(fd),
          hard_wake_fd_(hard_wake_fd),
          remote_(std::move(remote)),
          write_timeout_(write_timeout),
          accepting_(accepting) {}

    const HttpRequest& request() const override { return request_; }
    HttpRequest& request() { return request_; }
    const std::string& remote_address() const override { return remote_; }

    bool respond(int status, Headers headers, std::string_view body) override;
    // With no content length the body is sent chunked (or until close for HTTP/1.0).
    bool begin(int status, Headers headers, std::optional<std::size_t> content_length) override;
    bool write(std::string_view data) override;
    bool finish() override;
    // The server takes the pump once the handler returns (see BodyPump).
    bool hand_off(std::unique_ptr<BodyPump> pump) override;
    // The server takes the deferred once the handler (or the resume() running) returns; see
    // Deferred and HttpServer. Refused once anything was answered.
    bool defer(std::unique_ptr<Deferred> deferred) override;
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
    bool send(std::string_view bytes);

    // What client_gone() knows without asking the socket. While a deferred request's resume()
    // runs, the client's hang-up is watched in epoll: a hang-up would have been the wake-up
    // (seen), and otherwise the client is taken as there (watched); a hang-up racing the
    // wake-up is met by the next write, or by the pump's own hang-up watch. Outside resume():
    // unknown, and client_gone() polls the socket.
    enum class HangUp { unknown, watched, seen };

    int fd_;
    int hard_wake_fd_;
    std::string remote_;
    milliseconds write_timeout_;
    const std::atomic<bool>& accepting_;  // the server's: once false, answers say close
    HttpRequest request_;
    bool head_sent_ = false;
    int status_ = 0;
    bool finished_ = false;
    bool broken_ = false;
    bool close_after_ = false;
    HangUp hang_up_ = HangUp::unknown;
    BodyEncoder encoder_;
    std::string pending_head_;
    std::unique_ptr<BodyPump> pump_;
    std::unique_ptr<Deferred> deferred_;  // accepted, not taken by the server yet
};

using HttpHandler = std::function<void(HttpExchange&)>;

// HTTP/1.1 server on a pool of reusable threads. Idle threads all wait in one epoll set for
// a new connection, an idle keep-alive connection that became readable, or the earliest idle
// deadline; every registration is one-shot, so each event wakes exactly one thread, which
// then serves that connection itself, blocking, until the connection goes idle again. Idle
// connections wait in epoll and hold no thread; a thread is started only when a thread takes
// work and none is left waiting, so a Connection: close client costs no thread creation and
// no hand-off between threads. Every thread is owned by the server and joined by stop() (idle
// ones that retire are joined by another thread). Lifecycle: start() once, then optionally
// stop_accepting() and drain(), then stop(); the destructor calls stop().
//
// A handler may hand the rest of a streamed body to the server (Exchange::hand_off): the
// connection then holds no thread either. Its pump's source and the client socket wait in the
// same epoll set, a woken thread takes one non-blocking step (pull, encode, write) and goes
// back to waiting, and a client slower than the source pauses the source (see Pump in the
// .cpp). A pump counts as an active request until its body has ended.
//
// A handler may also defer the whole rest of a request (Exchange::defer, before answering): the
// exchange (heap-allocated per request for this) and the connection move into a Deferral and
// wait with no thread. Its wait_fd() is armed for input, the client socket for hang-up only (a
// pipelined next request must not wake it), its deadline() joins the timer. A wake takes the
// deferral's mutex, stops watching wait_fd() (before resume(), which may close it: a
// registration that fired stays, disarmed, for the next wait on that descriptor; any other is
// removed), and calls resume(): wait arms the waits again (re-read); done goes on exactly as
// after a handler (a handed-off pump starts, no answer gets the 500, a reusable connection is
// served on by the same thread); an exception answers 500, or cuts a begun answer. Beyond the
// Deferred contract: a defer() accepted inside resume() replaces the running deferred once
// resume() returns; a resume() that says wait after the client hung up is cancelled (it would
// wake for ever); a wait_fd() epoll refuses gets cancel() and a 500. Each waiting deferral
// needs a wait_fd() of its own: arming one that another deferral waits on takes its
// registration over, and the other then wakes only at its deadline. A deferral is an active
// request until done; stop()/abort() call cancel() exactly once, under its mutex, then close
// the connection, and no resume() follows.
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
    void abort();

    std::size_t open_connections() const { return open_connections_.load(); }
    // Connections refused at accept time: over max_connections, or out of descriptors.
    std::uint64_t refused_connections() const { return refused_connections_.load(); }
    // Requests being served, pumped bodies included.
    std::size_t active_requests() const { return active_requests_.load(); }
    // Pumped bodies in flight, and those of them whose source is paused because their client
    // has not taken the bytes already pulled.
    std::size_t pumps() const { return pump_count_.load(); }
    std::size_t paused_pumps() const { return paused_pumps_.load(); }
    // Requests deferred (Exchange::defer) and not done yet, a resume() running included.
    std::size_t deferred() const { return deferral_count_.load(); }
    // Threads alive now, and threads ever started: what connections cost.
    std::size_t thread_count() const;
    std::uint64_t threads_started() const { return threads_started_.load(); }

  private:
    struct Connection;  // one client connection: socket, unread bytes, idle deadline
    using ConnectionPtr = std::unique_ptr<Connection>;
    struct Pump;  // a handed-off body: the pump, its connection, bytes the client has not taken
    using PumpPtr = std::shared_ptr<Pump>;
    enum class PumpWake { source, client, timer };
    struct Deferral;  // a deferred request: its Deferred, exchange and connection
    using DeferralPtr = std::shared_ptr<Deferral>;

    void thread_main(std::uint64_t self);
    void spawn_thread_locked();
    // Starts a thread when every thread stayed busy for busy_grace (see eager_threads).
    void monitor_main();
    ConnectionPtr on_event(std::uint64_t key, std::uint32_t events);
    ConnectionPtr accept_one();
    void on_stop_accepting();
    ConnectionPtr on_timer();
    void arm_timer_locked();
    void serve(ConnectionPtr conn);
    bool park(ConnectionPtr& conn);
    void close_connection(ConnectionPtr conn, bool timed_out);
    void take_parked_locked(std::vector<ConnectionPtr>& out);
    bool read_request(Connection& conn, HttpRequest& request, int& error_status,
                      std::string& error);
    void send_error(int fd, int status, std::string_view message);
    // A 503 to a connection the server will not serve, and the count of them.
    void refuse(int fd, std::string_view message);
    void shed_pending_connection();
    void request_done();
    // After a handler, or a deferred's last resume(), returned: hands the body to a pump,
    // answers for a handler that did not, ends the request. Returns the connection when it
    // can serve the next request, else nullptr (taken by a pump, or closed).
    ConnectionPtr end_request(ConnectionPtr conn, HttpExchange& exchange);
    // What a handler or resume() that threw leaves: a 500 when nothing was answered, else a cut.
    void fail_exchange(HttpExchange& exchange, std::string_view what);
    void start_deferral(ConnectionPtr conn, std::unique_ptr<HttpExchange> exchange);
    // Called with the deferral's mutex held and the deferral not ended. Returns the connection
    // when the request is done and the connection goes on (served by the caller's thread).
    enum class DeferralWake { source, hang_up, other };  // other: its deadline, or spurious
    ConnectionPtr deferral_step(Deferral& deferral, DeferralWake wake);
    bool deferral_arm(Deferral& deferral);
    // Takes wait_fd() out of epoll, unless its registration `fired` (see the .cpp).
    void deferral_unwatch(Deferral& deferral, bool fired);
    // Ends a deferral without resuming it: cancel(), an optional 500, then the close.
    void cancel_deferral(Deferral& deferral, bool answer);
    void end_all_deferrals();
    void start_pump(ConnectionPtr conn, HttpExchange& exchange);
    // Called with the pump's mutex held and the pump not ended.
    void pump_step(Pump& pump, PumpWake wake, std::uint32_t events);
    void pump_pull(Pump& pump, bool timed_out);
    bool pump_flush(Pump& pump);
    bool pump_rearm(Pump& pump, PumpWake wake);
    void end_pump(Pump& pump, bool client_gone);
    void end_all_pumps();

    HttpServerOptions options_;
    HttpHandler handler_;
    const std::size_t eager_limit_;  // threads started at once (see eager_threads)
    Fd epoll_;
    Fd timer_;  // a timerfd set to the earliest deadline of a parked connection
    std::uint16_t port_ = 0;
    WakeSignal idle_wake_;  // stop_accepting(): closes the listener and idle connections
    WakeSignal hard_wake_;  // aborts in-flight work at final stop
    WakeSignal stop_wake_;  // wakes every thread waiting in epoll at final stop

    std::mutex listener_mutex_;  // accept against close
    Fd listener_;                // guarded by listener_mutex_ while threads run
    Fd reserve_fd_;              // listener_mutex_; given up for a moment when out of descriptors

    // The threads. Never held with mutex_ or listener_mutex_.
    mutable std::mutex threads_mutex_;
    // Guarded by threads_mutex_:
    std::condition_variable monitor_cv_;  // starving_ set, or stopping_
    std::thread monitor_;                 // monitor_main; started by start(), joined by stop()
    std::map<std::uint64_t, std::thread> threads_;
    std::vector<std::thread> retired_;  // exited idle threads, to be joined
    bool starving_ = false;             // no thread waits and no eager one may start
    std::uint64_t next_thread_id_ = 0;
    std::atomic<bool> has_retired_{false};         // retired_ is not empty
    std::atomic<std::size_t> waiting_threads_{0};  // in (or entering) epoll_wait
    std::atomic<std::uint64_t> returns_{0};        // times a thread came back to epoll_wait

    mutable std::mutex mutex_;
    std::condition_variable idle_cv_;  // drain(): active_requests_ reached 0
    // Guarded by mutex_:
    std::map<std::uint64_t, ConnectionPtr> parked_;           // idle, armed in epoll
    std::multimap<TimePoint, std::uint64_t> deadlines_;       // of parked connections
    std::map<std::uint64_t, PumpPtr> pumps_;                  // by their connection's id
    std::multimap<TimePoint, std::uint64_t> pump_deadlines_;  // source stall or client write
    std::map<std::uint64_t, DeferralPtr> deferrals_;          // by their connection's id
    std::multimap<TimePoint, std::uint64_t> deferral_deadlines_;
    TimePoint timer_at_ = TimePoint::max();  // what timer_ is set to
    bool stopped_ = false;
    // Set once under mutex_ (tables refuse new entries from then on); read by the threads
    // without it.
    std::atomic<bool> stopping_{false};

    std::atomic<std::uint64_t> next_connection_id_{0};
    std::atomic<std::size_t> open_connections_{0};
    std::atomic<std::uint64_t> refused_connections_{0};
    std::atomic<std::size_t> active_requests_{0};
    std::atomic<std::size_t> pump_count_{0};
    std::atomic<std::size_t> paused_pumps_{0};
    std::atomic<std::size_t> deferral_count_{0};
    std::atomic<std::uint64_t> threads_started_{0};
    std::atomic<bool> accepting_{false};
    std::atomic<bool> aborted_{false};
};

}  // namespace llama_pool
