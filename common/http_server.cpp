#include "common/http_server.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "common/error_body.hpp"

namespace llama_pool {

namespace {

std::string render_head(int status, int version_minor, const Headers& headers) {
    std::string head =
        fmt::format("HTTP/1.{} {} {}\r\n", version_minor, status, reason_phrase(status));
    for (const auto& [name, value] : headers.fields()) {
        head += name;
        head += ": ";
        head += value;
        head += "\r\n";
    }
    head += "\r\n";
    return head;
}

// What an epoll event is about: the listener, a wake-up, the timer, or a parked connection.
constexpr std::uint64_t kListenerKey = 0;
constexpr std::uint64_t kIdleWakeKey = 1;
constexpr std::uint64_t kStopKey = 2;
constexpr std::uint64_t kTimerKey = 3;
constexpr std::uint64_t kHardWakeKey = 4;
constexpr std::uint64_t kFirstConnectionKey = 5;
// A pump's source is registered under its connection's key with this bit set.
constexpr std::uint64_t kSourceTag = std::uint64_t{1} << 63;

bool epoll_control(int epoll_fd, int op, int fd, std::uint32_t events, std::uint64_t key) {
    epoll_event event{};
    event.events = events;
    event.data.u64 = key;
    return ::epoll_ctl(epoll_fd, op, fd, &event) == 0;
}

// Arms a descriptor that may still be registered from an earlier wait: one a deferral or
// pump waited on before is left registered, disarmed, when its one-shot wake came (see
// deferral_unwatch), so that the next wait on it costs one MOD instead of a DEL and an ADD.
// The relay's waits are all on such descriptors (a pooled worker connection, a queue place's
// eventfd the registry reuses); one the kernel does not know (a new connection) gets an ADD
// after the MOD fails. epoll knows a registration by descriptor and open file together, so a
// number reused by a new socket is not found either.
bool epoll_arm(int epoll_fd, int fd, std::uint32_t events, std::uint64_t key) {
    return epoll_control(epoll_fd, EPOLL_CTL_MOD, fd, events, key) ||
           (errno == ENOENT && epoll_control(epoll_fd, EPOLL_CTL_ADD, fd, events, key));
}

// Sets `timer` to fire at `deadline` (steady_clock is CLOCK_MONOTONIC), or disarms it.
void set_timer(int timer, TimePoint deadline) {
    itimerspec spec{};
    if (deadline != TimePoint::max()) {
        const auto ns =
            std::chrono::duration_cast<std::chrono::nanoseconds>(deadline.time_since_epoch())
                .count();
        // Zero would disarm it; a deadline that early has passed anyway.
        spec.it_value.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
        spec.it_value.tv_nsec = std::max<long>(1, static_cast<long>(ns % 1'000'000'000));
    }
    ::timerfd_settime(timer, TFD_TIMER_ABSTIME, &spec, nullptr);
}

}  // namespace

bool HttpExchange::send(std::string_view bytes) {
    if (broken_) {
        return false;
    }
    const auto status = write_all(fd_, bytes, Clock::now() + write_timeout_, {hard_wake_fd_, -1});
    if (status != IoStatus::ok) {
        broken_ = true;
        return false;
    }
    return true;
}

bool HttpExchange::respond(int status, Headers headers, std::string_view body) {
    if (!begin(status, std::move(headers), body.size())) {
        return false;
    }
    // Head and body in one write when the body is small: one segment on the wire.
    return write(body) && finish();
}

bool HttpExchange::begin(int status, Headers headers, std::optional<std::size_t> content_length) {
    if (head_sent_ || deferred_) {
        return false;
    }
    head_sent_ = true;
    status_ = status;
    headers.remove("Content-Length");
    headers.remove("Transfer-Encoding");
    headers.remove("Connection");
    const bool bodiless = request_.method == "HEAD" || status == 204 || status == 304;
    // RFC 9110 §8.6 and RFC 9112 §6.1: a 1xx or 204 carries neither Content-Length nor
    // Transfer-Encoding; its end is known without them, so the connection stays usable.
    if (status == 204 || (status >= 100 && status < 200)) {
        encoder_.length_left = 0;
    } else if (content_length) {
        headers.add("Content-Length", std::to_string(*content_length));
        encoder_.length_left = bodiless ? 0 : *content_length;
    } else if (request_.version_minor >= 1 && !bodiless) {
        headers.add("Transfer-Encoding", "chunked");
        encoder_.chunked = true;
    } else {
        close_after_ = true;  // HTTP/1.0 has no chunked coding: the close ends the body
    }
    if (!request_.keep_alive() || !accepting_) {
        close_after_ = true;  // a draining server serves no further request on it
    }
    headers.add("Connection", close_after_ ? "close" : "keep-alive");
    const auto head = render_head(status, 1, headers);
    if (content_length && *content_length > 0 && *content_length <= 16 * 1024 && !bodiless) {
        pending_head_ = head;  // coalesced with the body by the first write()
        return true;
    }
    return send(head);
}

void BodyEncoder::encode(std::string_view data, std::string& out) {
    if (chunked) {
        if (!data.empty()) {
            out += fmt::format("{:x}\r\n", data.size());
            out += data;
            out += "\r\n";
        }
    } else if (length_left) {
        const auto n = std::min(*length_left, data.size());
        out += data.substr(0, n);
        *length_left -= n;
    } else {
        out += data;
    }
}

bool BodyEncoder::end(std::string& out) const {
    if (chunked) {
        out += "0\r\n\r\n";
    }
    return !length_left || *length_left == 0;
}

bool HttpExchange::write(std::string_view data) {
    if (!head_sent_ || finished_ || pump_) {
        return false;
    }
    std::string out = std::move(pending_head_);
    pending_head_.clear();
    encoder_.encode(data, out);
    return out.empty() || send(out);
}

bool HttpExchange::finish() {
    if (pump_) {
        return false;  // the server ends a handed-off body
    }
    if (!head_sent_ || finished_) {
        return !broken_;
    }
    if (!pending_head_.empty() && !write({})) {
        return false;
    }
    finished_ = true;
    std::string last;
    if (!encoder_.end(last)) {
        broken_ = true;  // the promised length was not delivered; only closing is honest
        return false;
    }
    return last.empty() ? !broken_ : send(last);
}

bool HttpExchange::hand_off(std::unique_ptr<BodyPump> pump) {
    if (!pump || pump_ || !head_sent_ || finished_ || broken_) {
        return false;
    }
    pump_ = std::move(pump);
    return true;
}

bool HttpExchange::defer(std::unique_ptr<Deferred> deferred) {
    if (!deferred || deferred_ || pump_ || head_sent_ || finished_ || broken_) {
        return false;
    }
    deferred_ = std::move(deferred);
    return true;
}

bool HttpExchange::write_raw(std::string_view bytes) {
    head_sent_ = true;
    return send(bytes);
}

bool HttpExchange::client_gone() const {
    switch (hang_up_) {
        case HangUp::seen:
            return true;
        case HangUp::watched:
            return false;
        case HangUp::unknown:
            break;
    }
    return peer_closed(fd_);
}

struct HttpServer::Connection {
    Fd fd;
    std::uint64_t id = 0;
    std::string remote;
    std::string buffer;       // received and not parsed yet: the start of the next request
    bool first = true;        // nothing served yet: an idle timeout is answered with 408
    bool registered = false;  // known to epoll (re-armed with EPOLL_CTL_MOD from then on)
    // How serve() reads first: after a deferred request's answer, the next one cannot be there.
    ReadStart start = ReadStart::try_first;
    TimePoint idle_deadline;  // the next request's first byte must arrive by then
    std::multimap<TimePoint, std::uint64_t>::iterator deadline_entry;  // while parked
};

// A handed-off body (Exchange::hand_off) and the connection it goes to. Threads find it in
// pumps_ (under mutex_) by either of its epoll keys: the connection's id for the client socket,
// that id with kSourceTag for the source. Several wakes can come at once (the client's and the
// source's; the source's again when bytes arrive during a step), so two threads may wake for
// one pump: `mutex` serialises their steps. A step never blocks (a non-blocking pull and a
// non-blocking write), so a second thread waits for it microseconds at most; that was simpler,
// and no slower, than handing events between threads. The client's registration is one-shot:
// a client wake re-arms it, and a step re-arms it only when what it waits for changed. The
// source's is edge-triggered, so a stream event costs no re-arm (3 system calls instead of 4):
// pull() reads until the source would block (the BodyPump contract), and any byte that comes
// later is a new edge. It is changed only to pause or resume the source; asking for input
// again reports bytes already waiting. A wake that finds `ended` set does nothing, and no
// descriptor is touched after `ended`, so a closed descriptor's number, reused by a new
// connection, is never re-armed by mistake. Lock order: Pump::mutex, then HttpServer::mutex_.
struct HttpServer::Pump {
    std::mutex mutex;
    // Set before the pump is published in pumps_, constant after:
    std::uint64_t id = 0;
    int client_fd = -1;
    int source_fd = -1;
    // Guarded by mutex:
    ConnectionPtr conn;
    std::unique_ptr<BodyPump> body;
    BodyEncoder encoder;
    bool close_after = false;
    std::string pending;                        // encoded bytes the client has not taken yet
    std::string piece;                          // what one pull() produced, before encoding
    BodyPump::Step end = BodyPump::Step::more;  // how the body ends once `pending` is sent
    bool ended = false;
    bool source_registered = false;
    std::uint32_t source_events = 0;  // interest last armed; 0 while paused or done
    std::uint32_t client_events = 0;
    bool paused = false;     // the client is behind: the source is not read
    bool full_pull = false;  // the last pull() stopped at kPullBytes: the source may hold more
    TimePoint write_deadline = TimePoint::max();  // the client must take a byte by then
    // Guarded by the server's mutex_:
    bool has_deadline = false;
    std::multimap<TimePoint, std::uint64_t>::iterator deadline_entry;
};

// A deferred request (Exchange::defer): its Deferred, the exchange it answers and the connection,
// waiting in epoll with no thread. Keys as for a pump: the connection's id for the client
// socket (armed for hang-up only: a pipelined request stays in the socket), that id with
// kSourceTag for wait_fd(). Any wake (wait_fd, deadline, hang-up) takes `mutex` and runs one
// step: wait_fd() is taken out of epoll (before resume(), which may close it: a DEL after it
// could hit another registration that reused the number), resume() runs, and then either the
// waits are armed again (re-read) or the request ends as after a handler. A wake that finds
// `ended` does nothing; stop() and abort() cancel() under `mutex`, so never during a resume().
// Lock order: Deferral::mutex, then Pump::mutex (a resume() that hands a body to a pump), then
// HttpServer::mutex_.
struct HttpServer::Deferral {
    std::mutex mutex;
    std::uint64_t id = 0;  // set before it is published in deferrals_, constant after
    // Guarded by mutex:
    ConnectionPtr conn;
    std::unique_ptr<HttpExchange> exchange;
    std::unique_ptr<Deferred> deferred;
    int wait_fd = -1;  // registered in epoll while >= 0
    bool ended = false;
    // Guarded by the server's mutex_:
    bool has_deadline = false;
    std::multimap<TimePoint, std::uint64_t>::iterator deadline_entry;
};

HttpServer::HttpServer(HttpServerOptions options, HttpHandler handler)
    : options_(std::move(options)),
      handler_(std::move(handler)),
      eager_limit_(options_.eager_threads > 0
                       ? options_.eager_threads
                       : std::max<std::size_t>(1, std::thread::hardware_concurrency())) {}

HttpServer::~HttpServer() {
    stop();
}

bool HttpServer::start(std::string& error) {
    listener_ = listen_tcp(options_.host, options_.port, 1024, error);
    if (!listener_.valid()) {
        return false;
    }
    // Accepted only after epoll said a connection waits; non-blocking all the same, so that a
    // connection reset in between cannot block the thread.
    ::fcntl(listener_.get(), F_SETFL, ::fcntl(listener_.get(), F_GETFL) | O_NONBLOCK);
    reserve_fd_ = Fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    // A relay writes pieces as they arrive; Nagle would hold each small write back until the
    // client's delayed ACK (40 ms), once per response. Accepted sockets inherit the option
    // from the listener on Linux, which saves a setsockopt per connection.
    const int one = 1;
    ::setsockopt(listener_.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    port_ = local_port(listener_.get());
    epoll_ = Fd(::epoll_create1(EPOLL_CLOEXEC));
    timer_ = Fd(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
    // One-shot, so that each event goes to one thread; the stop signal reaches them all.
    constexpr std::uint32_t once = EPOLLIN | EPOLLONESHOT;
    if (!epoll_.valid() || !timer_.valid() ||
        !epoll_control(epoll_.get(), EPOLL_CTL_ADD, listener_.get(), once, kListenerKey) ||
        !epoll_control(epoll_.get(), EPOLL_CTL_ADD, idle_wake_.fd(), once, kIdleWakeKey) ||
        !epoll_control(epoll_.get(), EPOLL_CTL_ADD, timer_.get(), once, kTimerKey) ||
        !epoll_control(epoll_.get(), EPOLL_CTL_ADD, hard_wake_.fd(), once, kHardWakeKey) ||
        !epoll_control(epoll_.get(), EPOLL_CTL_ADD, stop_wake_.fd(), EPOLLIN, kStopKey)) {
        error = std::string("epoll: ") + std::strerror(errno);
        listener_.reset();
        return false;
    }
    accepting_ = true;
    std::lock_guard lock(threads_mutex_);
    spawn_thread_locked();
    if (threads_.empty()) {
        error = "cannot start a server thread";
        return false;
    }
    monitor_ = std::thread([this] { monitor_main(); });
    return true;
}

void HttpServer::monitor_main() {
    std::unique_lock lock(threads_mutex_);
    while (!stopping_) {
        monitor_cv_.wait(lock, [this] { return stopping_ || starving_; });
        // Threads that keep coming back to epoll are busy, not stuck: nothing to start.
        // Checked for as long as none waits, since a stuck thread takes no event that could
        // set starving_ again.
        while (!stopping_ && waiting_threads_ == 0) {
            const auto seen = returns_.load();
            monitor_cv_.wait_for(lock, options_.busy_grace, [this] { return stopping_.load(); });
            if (!stopping_ && waiting_threads_ == 0 && returns_ == seen) {
                spawn_thread_locked();
            }
        }
        starving_ = false;
    }
}

void HttpServer::spawn_thread_locked() {
    // Busy threads never outnumber connections, so this bound is only a backstop.
    if (stopping_ || threads_.size() > options_.max_connections + options_.spare_threads) {
        return;
    }
    const auto id = next_thread_id_++;
    try {
        threads_.emplace(id, std::thread([this, id] { thread_main(id); }));
        ++threads_started_;
    } catch (const std::system_error&) {
        // Out of threads: events wait until a busy thread comes back.
    }
}

void HttpServer::thread_main(std::uint64_t self) {
    const auto idle_ms = static_cast<int>(std::min<long long>(
        std::max<long long>(1, options_.idle_thread_timeout.count()), 3'600'000));
    const auto spares = std::max<std::size_t>(1, options_.spare_threads);
    // When this thread last served a connection. Pump steps are not counted: they take
    // microseconds, and under steady streams every waiting thread is woken in turn (epoll
    // wakes its waiters in order), so none would ever see a whole idle timeout pass and the
    // threads a burst of connections started would stay for good.
    auto served_at = Clock::now();
    // The counts are atomics and threads_mutex_ is taken only to start, retire or join a
    // thread: taken around every epoll_wait, it was the server's most contended lock.
    while (!stopping_) {
        if (has_retired_) {
            std::vector<std::thread> retired;
            {
                std::lock_guard lock(threads_mutex_);
                retired.swap(retired_);
                has_retired_ = false;
            }
            for (auto& t : retired) {
                t.join();
            }
        }
        ++waiting_threads_;
        ++returns_;
        epoll_event event{};
        const int n = ::epoll_wait(epoll_.get(), &event, 1, idle_ms);
        auto conn = n == 1 ? on_event(event.data.u64, event.events) : nullptr;
        const auto others_waiting = --waiting_threads_;
        const bool idle =
            n == 0 || (!conn && Clock::now() - served_at >= options_.idle_thread_timeout);
        if (idle && others_waiting >= spares) {
            std::lock_guard lock(threads_mutex_);
            // Enough threads wait without this one; another thread joins it.
            if (!stopping_ && waiting_threads_ >= spares) {
                const auto it = threads_.find(self);
                retired_.push_back(std::move(it->second));
                threads_.erase(it);
                has_retired_ = true;
                return;
            }
        }
        if (!conn) {
            continue;
        }
        // Someone must wait for the next event while this thread serves: a new thread at
        // once up to eager_threads, beyond them only if this one turns out to block.
        if (others_waiting == 0) {
            std::lock_guard lock(threads_mutex_);
            if (waiting_threads_ == 0) {
                if (threads_.size() < eager_limit_) {
                    spawn_thread_locked();
                } else if (!starving_) {
                    starving_ = true;
                    monitor_cv_.notify_one();
                }
            }
        }
        serve(std::move(conn));
        served_at = Clock::now();
    }
}

HttpServer::ConnectionPtr HttpServer::on_event(std::uint64_t key, std::uint32_t events) {
    switch (key) {
        case kListenerKey:
            return accept_one();
        case kIdleWakeKey:
            on_stop_accepting();
            return nullptr;
        case kTimerKey:
            return on_timer();
        case kHardWakeKey:
            end_all_pumps();  // not re-armed: abort() is final
            end_all_deferrals();
            return nullptr;
        case kStopKey:
            return nullptr;
        default:
            break;
    }
    PumpPtr pump;
    DeferralPtr deferral;
    {
        std::lock_guard lock(mutex_);
        const auto it = (key & kSourceTag) != 0 ? parked_.end() : parked_.find(key);
        if (it != parked_.end()) {
            auto conn = std::move(it->second);
            parked_.erase(it);
            deadlines_.erase(conn->deadline_entry);
            return conn;
        }
        const auto p = pumps_.find(key & ~kSourceTag);
        const auto d = deferrals_.find(key & ~kSourceTag);
        if (p != pumps_.end()) {
            pump = p->second;
        } else if (d != deferrals_.end()) {
            deferral = d->second;
        } else {
            return nullptr;  // closed meanwhile (deadline, stop_accepting, pump or deferral ended)
        }
    }
    if (deferral) {
        std::lock_guard step(deferral->mutex);
        if (deferral->ended) {
            return nullptr;  // another thread woke for it and finished it
        }
        const bool hung_up =
            (key & kSourceTag) == 0 && (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0;
        return deferral_step(*deferral, (key & kSourceTag) != 0 ? DeferralWake::source
                                        : hung_up               ? DeferralWake::hang_up
                                                                : DeferralWake::other);
    }
    std::lock_guard step(pump->mutex);
    if (!pump->ended) {
        pump_step(*pump, (key & kSourceTag) != 0 ? PumpWake::source : PumpWake::client, events);
    }
    return nullptr;
}

HttpServer::ConnectionPtr HttpServer::accept_one() {
    std::unique_lock guard(listener_mutex_);
    if (!accepting_ || !listener_.valid()) {
        return nullptr;  // on_stop_accepting() closes it
    }
    sockaddr_storage addr{};
    socklen_t addr_len = sizeof addr;
    Fd client(
        ::accept4(listener_.get(), reinterpret_cast<sockaddr*>(&addr), &addr_len, SOCK_CLOEXEC));
    const int accept_errno = errno;
    // Counted (or refused) under the listener's lock, so in accept order: two threads that
    // accepted one after the other could otherwise check the count the other way round, and
    // at the limit a connection accepted later took the place of one accepted earlier, which
    // was refused instead.
    const bool admitted = client.valid() && open_connections_.load() < options_.max_connections;
    if (admitted) {
        ++open_connections_;
    } else if (client.valid()) {
        // Over the connection limit: a clean 503 is better than a silent backlog. Sent before
        // the next accept (a few hundred bytes into a fresh socket's buffer: no wait), so that
        // refusals reach their clients in accept order as well.
        refuse(client.get(), "too many open connections");
    }
    // Re-armed at once: the next connection goes to another thread while this one serves.
    epoll_control(epoll_.get(), EPOLL_CTL_MOD, listener_.get(), EPOLLIN | EPOLLONESHOT,
                  kListenerKey);
    guard.unlock();
    if (!client.valid()) {
        if (accept_errno == EMFILE || accept_errno == ENFILE) {
            shed_pending_connection();
        } else if (accept_errno == ENOBUFS || accept_errno == ENOMEM) {
            // The listener stays readable; pause instead of spinning on it.
            std::this_thread::sleep_for(milliseconds(10));
        }
        return nullptr;
    }
    if (!admitted) {
        return nullptr;  // refused above
    }
    auto conn = std::make_unique<Connection>();
    conn->remote = address_text(addr);
    conn->fd = std::move(client);
    conn->id = kFirstConnectionKey + next_connection_id_++;
    conn->idle_deadline = Clock::now() + options_.head_timeout;
    return conn;
}

namespace {

// Reads and drops whatever the client has sent so far, without waiting: closing a socket
// with unread input sends a reset, which can destroy the answer before the client reads it.
void discard_pending_input(int fd) {
    char buf[16384];
    for (int i = 0; i < 4; ++i) {
        if (::recv(fd, buf, sizeof buf, MSG_DONTWAIT) <= 0) {
            return;
        }
    }
}

}  // namespace

void HttpServer::refuse(int fd, std::string_view message) {
    ++refused_connections_;
    discard_pending_input(fd);
    send_error(fd, 503, message);
    ::shutdown(fd, SHUT_WR);
    discard_pending_input(fd);
}

// Out of descriptors, accept() leaves the connection in the backlog: its client would hang
// and the listener would stay readable. The reserve descriptor is given up for a moment to
// accept it and answer 503 (the libev/nginx way), then taken back.
void HttpServer::shed_pending_connection() {
    bool shed_one = false;
    bool have_reserve = false;
    {
        std::lock_guard guard(listener_mutex_);
        reserve_fd_.reset();
        if (listener_.valid()) {
            Fd shed(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
            if (shed.valid()) {
                refuse(shed.get(), "the pool is out of file descriptors, retry later");
                shed_one = true;
            }
        }
        reserve_fd_ = Fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
        have_reserve = reserve_fd_.valid();  // read under the lock: other threads shed too
    }
    if (!shed_one || !have_reserve) {
        // Not even that worked: wait a moment rather than spin on a readable listener.
        std::this_thread::sleep_for(milliseconds(10));
    }
}

void HttpServer::on_stop_accepting() {
    {
        std::lock_guard guard(listener_mutex_);
        if (listener_.valid()) {
            ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, listener_.get(), nullptr);
            listener_.reset();
        }
    }
    std::vector<ConnectionPtr> idle;
    {
        std::lock_guard lock(mutex_);
        take_parked_locked(idle);
        arm_timer_locked();
    }
    for (auto& conn : idle) {
        close_connection(std::move(conn), false);
    }
}

HttpServer::ConnectionPtr HttpServer::on_timer() {
    std::uint64_t expirations = 0;
    [[maybe_unused]] const auto rc = ::read(timer_.get(), &expirations, sizeof expirations);
    std::vector<ConnectionPtr> expired;
    std::vector<PumpPtr> due;
    std::vector<DeferralPtr> due_deferrals;
    {
        std::lock_guard lock(mutex_);
        const auto now = Clock::now();
        while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
            const auto it = parked_.find(deadlines_.begin()->second);
            deadlines_.erase(deadlines_.begin());
            expired.push_back(std::move(it->second));
            parked_.erase(it);
        }
        while (!pump_deadlines_.empty() && pump_deadlines_.begin()->first <= now) {
            const auto it = pumps_.find(pump_deadlines_.begin()->second);
            pump_deadlines_.erase(pump_deadlines_.begin());
            if (it != pumps_.end()) {
                it->second->has_deadline = false;
                due.push_back(it->second);
            }
        }
        while (!deferral_deadlines_.empty() && deferral_deadlines_.begin()->first <= now) {
            const auto it = deferrals_.find(deferral_deadlines_.begin()->second);
            deferral_deadlines_.erase(deferral_deadlines_.begin());
            if (it != deferrals_.end()) {
                it->second->has_deadline = false;
                due_deferrals.push_back(it->second);
            }
        }
        timer_at_ = TimePoint::min();  // set it again whatever it was
        arm_timer_locked();
        epoll_control(epoll_.get(), EPOLL_CTL_MOD, timer_.get(), EPOLLIN | EPOLLONESHOT, kTimerKey);
    }
    for (auto& conn : expired) {
        close_connection(std::move(conn), true);
    }
    for (auto& pump : due) {
        std::lock_guard step(pump->mutex);
        if (!pump->ended) {
            pump_step(*pump, PumpWake::timer, 0);
        }
    }
    // A request a resume() ended whose connection goes on: the first is served by this thread,
    // as a handler's thread would; the others wait for their next request in epoll.
    ConnectionPtr next;
    for (auto& deferral : due_deferrals) {
        std::lock_guard step(deferral->mutex);
        if (deferral->ended) {
            continue;
        }
        auto conn = deferral_step(*deferral, DeferralWake::other);
        if (!conn) {
            continue;
        }
        if (!next) {
            next = std::move(conn);
            continue;
        }
        conn->start = ReadStart::try_first;
        if (!park(conn)) {
            close_connection(std::move(conn), false);
        }
    }
    return next;
}

void HttpServer::arm_timer_locked() {
    auto next = deadlines_.empty() ? TimePoint::max() : deadlines_.begin()->first;
    if (!pump_deadlines_.empty()) {
        next = std::min(next, pump_deadlines_.begin()->first);
    }
    if (!deferral_deadlines_.empty()) {
        next = std::min(next, deferral_deadlines_.begin()->first);
    }
    if (next != timer_at_) {
        set_timer(timer_.get(), next);
        timer_at_ = next;
    }
}

bool HttpServer::park(ConnectionPtr& conn) {
    std::lock_guard lock(mutex_);
    if (!accepting_ || stopping_) {
        return false;
    }
    const auto id = conn->id;
    const int fd = conn->fd.get();
    const bool registered = conn->registered;
    conn->deadline_entry = deadlines_.emplace(conn->idle_deadline, id);
    conn->registered = true;
    auto& slot = parked_[id];
    slot = std::move(conn);
    // Armed last, with the connection already findable: a thread may see it at once. A
    // connection with the next request already read (pipelined after a pumped body) waits
    // for writability too, which it has, so that a thread takes it at once.
    const std::uint32_t ready = slot->buffer.empty() ? 0u : std::uint32_t{EPOLLOUT};
    if (!epoll_control(epoll_.get(), registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd,
                       EPOLLIN | EPOLLRDHUP | EPOLLONESHOT | ready, id)) {
        conn = std::move(slot);
        conn->registered = registered;
        deadlines_.erase(conn->deadline_entry);
        parked_.erase(id);
        return false;
    }
    if (slot->idle_deadline < timer_at_) {
        arm_timer_locked();
    }
    return true;
}

void HttpServer::take_parked_locked(std::vector<ConnectionPtr>& out) {
    for (auto& [id, conn] : parked_) {
        out.push_back(std::move(conn));
    }
    parked_.clear();
    deadlines_.clear();
}

void HttpServer::close_connection(ConnectionPtr conn, bool timed_out) {
    if (timed_out && conn->first) {
        send_error(conn->fd.get(), 408, "no request received in time");
    }
    if (conn->registered) {
        // Explicitly: a worker forked meanwhile may hold a copy of the descriptor, and epoll
        // forgets a socket only when its last copy is closed.
        ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, conn->fd.get(), nullptr);
    }
    // Uncounted before the client can see the close: a client that reconnects the moment it
    // reads the end of a Connection: close answer must not find its old place still taken
    // (at max_connections it got a 503, when this thread was preempted in between).
    --open_connections_;
    ::shutdown(conn->fd.get(), SHUT_RDWR);
    conn->fd.reset();
}

void HttpServer::send_error(int fd, int status, std::string_view message) {
    const auto body = make_error_body(status, message);
    Headers headers;
    headers.add("Content-Type", "application/json; charset=utf-8");
    headers.add("Content-Length", std::to_string(body.size()));
    headers.add("Connection", "close");
    auto bytes = render_head(status, 1, headers);
    bytes += body;
    write_all(fd, bytes, Clock::now() + milliseconds(1000), {hard_wake_.fd(), -1});
}

bool HttpServer::read_request(Connection& conn, HttpRequest& request, int& error_status,
                              std::string& error) {
    // The caller has the first bytes of the request in the buffer already.
    auto& buffer = conn.buffer;
    const int fd = conn.fd.get();
    const auto head_deadline = Clock::now() + options_.head_timeout;
    while (true) {
        request = HttpRequest{};
        const auto parsed = parse_request_head(buffer, options_.head_limits, request);
        if (parsed.status == ParseStatus::error) {
            error_status = parsed.error_status;
            error = parsed.error;
            return false;
        }
        if (parsed.status == ParseStatus::complete) {
            buffer.erase(0, parsed.consumed);
            break;
        }
        char chunk[8192];
        std::size_t n = 0;
        const auto status =
            read_some(fd, chunk, sizeof chunk, n, head_deadline, {hard_wake_.fd(), -1});
        if (status == IoStatus::timeout) {
            error_status = 408;
            error = "request head not received in time";
            return false;
        }
        if (status != IoStatus::ok) {
            return false;
        }
        buffer.append(chunk, n);
    }

    const auto framing = request_framing(request);
    if (framing.error_status != 0) {
        error_status = framing.error_status;
        error = framing.error;
        return false;
    }
    const auto kind = framing.framing.kind;
    if (kind == BodyFraming::Kind::length && framing.framing.length > options_.max_body_bytes) {
        error_status = 413;
        error = fmt::format("request body of {} bytes is over the limit of {} bytes",
                            framing.framing.length, options_.max_body_bytes);
        return false;
    }
    if (kind != BodyFraming::Kind::none) {
        if (const auto expect = request.headers.get("Expect")) {
            if (!iequals(*expect, "100-continue")) {
                error_status = 417;
                error = "only 'Expect: 100-continue' is supported";
                return false;
            }
            if (buffer.empty() && request.version_minor >= 1) {
                write_all(fd, "HTTP/1.1 100 Continue\r\n\r\n",
                          Clock::now() + options_.write_timeout, {hard_wake_.fd(), -1});
            }
        }
    }
    if (kind != BodyFraming::Kind::none && buffer.empty()) {
        // The head came without its body. A client that writes head and body separately
        // with Nagle on (cpp-httplib does) holds the body back until this head is ACKed, and
        // a delayed ACK costs it 40 ms per request: acknowledge at once.
        const int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
    }
    const auto body_deadline = Clock::now() + options_.body_timeout;
    ChunkedDecoder decoder;
    auto need_more = [&]() -> bool {
        char chunk[16384];
        std::size_t n = 0;
        const auto status =
            read_some(fd, chunk, sizeof chunk, n, body_deadline, {hard_wake_.fd(), -1});
        if (status == IoStatus::timeout) {
            error_status = 408;
            error = "request body not received in time";
        }
        if (status != IoStatus::ok) {
            return false;
        }
        buffer.append(chunk, n);
        return true;
    };
    if (kind == BodyFraming::Kind::length) {
        const auto length = framing.framing.length;
        while (buffer.size() < length) {
            if (!need_more()) {
                return false;
            }
        }
        request.body.assign(buffer, 0, length);
        buffer.erase(0, length);
    } else if (kind == BodyFraming::Kind::chunked) {
        while (true) {
            std::size_t used = 0;
            const auto st = decoder.feed(buffer, used, request.body);
            buffer.erase(0, used);
            if (request.body.size() > options_.max_body_bytes) {
                error_status = 413;
                error = fmt::format("request body is over the limit of {} bytes",
                                    options_.max_body_bytes);
                return false;
            }
            if (st == ChunkedDecoder::Status::done) {
                break;
            }
            if (st == ChunkedDecoder::Status::error) {
                error_status = 400;
                error = "malformed chunked body: " + decoder.error();
                return false;
            }
            if (!need_more()) {
                return false;
            }
        }
    }
    return true;
}

void HttpServer::serve(ConnectionPtr conn) {
    // A new or woken connection usually has its request waiting; after a response, the
    // next request cannot be there yet.
    auto start = std::exchange(conn->start, ReadStart::try_first);
    while (!aborted_) {
        if (conn->buffer.empty()) {
            // Wait here keep_alive_linger for the next request, then leave the idle connection
            // to epoll and free this thread. Without a linger, a connection just answered is
            // parked at once: its next request cannot be there yet, and if it is, epoll says so
            // as soon as the connection is armed.
            const auto until =
                std::min(conn->idle_deadline, Clock::now() + options_.keep_alive_linger);
            char probe[8192];
            std::size_t n = 0;
            const bool park_now =
                start == ReadStart::wait_first && options_.keep_alive_linger <= Duration::zero();
            const auto status = park_now ? IoStatus::timeout
                                         : read_some(conn->fd.get(), probe, sizeof probe, n, until,
                                                     {idle_wake_.fd(), -1}, start);
            if (status == IoStatus::timeout) {
                const bool expired = Clock::now() >= conn->idle_deadline;
                if (!expired && park(conn)) {
                    return;
                }
                close_connection(std::move(conn), expired);
                return;
            }
            if (status != IoStatus::ok) {
                break;
            }
            conn->buffer.append(probe, n);
        }
        auto exchange =
            std::make_unique<HttpExchange>(HttpExchange::Key{}, conn->fd.get(), hard_wake_.fd(),
                                           conn->remote, options_.write_timeout, accepting_);
        int error_status = 0;
        std::string error;
        if (!read_request(*conn, exchange->request(), error_status, error)) {
            if (error_status != 0) {
                send_error(conn->fd.get(), error_status, error);
            }
            break;
        }
        conn->first = false;
        ++active_requests_;
        try {
            handler_(*exchange);
        } catch (const std::exception& e) {
            fail_exchange(*exchange, e.what());
        }
        if (exchange->deferred_) {
            // The request waits in epoll with its deferred and this thread goes back to the
            // pool. The request stays active until a resume() ends it.
            start_deferral(std::move(conn), std::move(exchange));
            return;
        }
        conn = end_request(std::move(conn), *exchange);
        if (!conn) {
            return;
        }
        start = ReadStart::wait_first;
    }
    close_connection(std::move(conn), false);
}

void HttpServer::fail_exchange(HttpExchange& exchange, std::string_view what) {
    if (exchange.deferred_) {
        // Deferred, then threw: the deferred never runs, but gives back what it holds.
        try {
            exchange.deferred_->cancel();
        } catch (const std::exception&) {
            // Dropped either way.
        }
        exchange.deferred_.reset();
    }
    if (!exchange.responded()) {
        Headers headers;
        headers.add("Content-Type", "application/json; charset=utf-8");
        exchange.respond(500, headers, make_error_body(500, what));
    } else {
        exchange.abort();
    }
}

HttpServer::ConnectionPtr HttpServer::end_request(ConnectionPtr conn, HttpExchange& exchange) {
    if (exchange.pump_) {
        // The rest of the body comes from the pump: the connection waits in epoll with it
        // and this thread goes back to the pool. The request stays active until the end.
        start_pump(std::move(conn), exchange);
        return nullptr;
    }
    if (!exchange.responded()) {
        Headers headers;
        headers.add("Content-Type", "application/json; charset=utf-8");
        exchange.respond(500, headers, make_error_body(500, "handler sent no response"));
    }
    const bool reusable = exchange.finish() && !exchange.close_after_;
    request_done();
    if (!reusable || !accepting_ || aborted_) {
        close_connection(std::move(conn), false);
        return nullptr;
    }
    conn->idle_deadline = Clock::now() + options_.keep_alive_timeout;
    return conn;
}

void HttpServer::start_deferral(ConnectionPtr conn, std::unique_ptr<HttpExchange> exchange) {
    auto deferral = std::make_shared<Deferral>();
    // Held until the waits are armed: a thread woken meanwhile waits for it.
    std::lock_guard step(deferral->mutex);
    deferral->id = conn->id;
    deferral->deferred = std::move(exchange->deferred_);
    deferral->exchange = std::move(exchange);
    deferral->conn = std::move(conn);
    ++deferral_count_;
    bool admitted = false;
    {
        std::lock_guard lock(mutex_);
        // As for pumps: abort() sets aborted_ before end_all_deferrals() takes this lock.
        if (!aborted_ && !stopping_) {
            deferrals_.emplace(deferral->id, deferral);
            admitted = true;
        }
    }
    if (!admitted) {
        cancel_deferral(*deferral, false);
    } else if (!deferral_arm(*deferral)) {
        cancel_deferral(*deferral, true);
    }
}

HttpServer::ConnectionPtr HttpServer::deferral_step(Deferral& deferral, DeferralWake wake) {
    // Before resume(), which may close wait_fd().
    deferral_unwatch(deferral, wake == DeferralWake::source);
    const bool hung_up = wake == DeferralWake::hang_up;
    auto& exchange = *deferral.exchange;
    auto step = Deferred::Step::done;
    // Whether the client left is known without asking the socket: its hang-up registration
    // is armed, and would have woken this deferral instead (see HttpExchange::client_gone).
    exchange.hang_up_ = hung_up ? HttpExchange::HangUp::seen : HttpExchange::HangUp::watched;
    try {
        step = deferral.deferred->resume(exchange);
    } catch (const std::exception& e) {
        fail_exchange(exchange, e.what());
    }
    exchange.hang_up_ = HttpExchange::HangUp::unknown;
    if (exchange.deferred_) {
        // resume() deferred the request again: the new deferred takes over from the old one
        // (destroyed here, its wait_fd() unwatched already) whatever resume() returned.
        deferral.deferred = std::move(exchange.deferred_);
        if (!deferral_arm(deferral)) {
            cancel_deferral(deferral, true);
        }
        return nullptr;
    }
    if (step == Deferred::Step::wait) {
        // After a hang-up, resume() must say done; waiting on would wake again at once for
        // ever (the hang-up stays), so the deferred is cancelled instead.
        if (hung_up) {
            cancel_deferral(deferral, false);
        } else if (!deferral_arm(deferral)) {
            cancel_deferral(deferral, true);
        }
        return nullptr;
    }
    deferral.ended = true;
    {
        std::lock_guard lock(mutex_);
        deferrals_.erase(deferral.id);
    }
    --deferral_count_;
    deferral.deferred.reset();
    const auto done = std::move(deferral.exchange);
    auto conn = end_request(std::move(deferral.conn), *done);
    if (conn) {
        conn->start = ReadStart::wait_first;
    }
    return conn;
}

bool HttpServer::deferral_arm(Deferral& deferral) {
    int fd = -1;
    auto deadline = TimePoint::max();
    try {
        fd = deferral.deferred->wait_fd();
        deadline = deferral.deferred->deadline();
    } catch (const std::exception&) {
        return false;
    }
    if (fd >= 0) {
        if (!epoll_arm(epoll_.get(), fd, EPOLLIN | EPOLLONESHOT, deferral.id | kSourceTag)) {
            return false;
        }
        deferral.wait_fd = fd;
    }
    // Hang-up only: a pipelined request waits in the socket until this one is answered.
    auto& conn = *deferral.conn;
    if (!epoll_control(epoll_.get(), conn.registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, conn.fd.get(),
                       EPOLLRDHUP | EPOLLONESHOT, deferral.id)) {
        return false;
    }
    conn.registered = true;
    std::lock_guard lock(mutex_);
    if (deadline != TimePoint::max()) {
        deferral.deadline_entry = deferral_deadlines_.emplace(deadline, deferral.id);
        deferral.has_deadline = true;
        if (deadline < timer_at_) {
            arm_timer_locked();
        }
    }
    return true;
}

void HttpServer::deferral_unwatch(Deferral& deferral, bool fired) {
    // A registration that just fired is disarmed (one-shot) and wakes no one again; it stays
    // registered for the next wait on the descriptor (epoll_arm), and the kernel forgets it
    // when the descriptor closes. Any other is removed here, while the descriptor is open:
    // a removal after resume() could hit a new socket that reused the number.
    if (deferral.wait_fd >= 0 && !fired) {
        ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, deferral.wait_fd, nullptr);
    }
    deferral.wait_fd = -1;
    std::lock_guard lock(mutex_);
    if (deferral.has_deadline) {
        deferral_deadlines_.erase(deferral.deadline_entry);
        deferral.has_deadline = false;
    }
}

void HttpServer::cancel_deferral(Deferral& deferral, bool answer) {
    deferral.ended = true;
    deferral_unwatch(deferral, false);  // before cancel(), which may close wait_fd()
    try {
        deferral.deferred->cancel();
    } catch (const std::exception&) {
        // The connection is cut either way.
    }
    deferral.deferred.reset();
    if (answer && !deferral.exchange->responded()) {
        Headers headers;
        headers.add("Content-Type", "application/json; charset=utf-8");
        deferral.exchange->respond(500, headers,
                                   make_error_body(500, "the request could not be deferred"));
    }
    {
        std::lock_guard lock(mutex_);
        deferrals_.erase(deferral.id);
    }
    --deferral_count_;
    deferral.exchange.reset();
    request_done();
    close_connection(std::move(deferral.conn), false);
}

void HttpServer::end_all_deferrals() {
    std::vector<DeferralPtr> all;
    {
        std::lock_guard lock(mutex_);
        for (const auto& [id, deferral] : deferrals_) {
            all.push_back(deferral);
        }
    }
    for (const auto& deferral : all) {
        std::lock_guard step(deferral->mutex);
        if (!deferral->ended) {
            cancel_deferral(*deferral, false);
        }
    }
}

namespace {

// Whether a pump's source has something to read (or an end or error to report) right now.
bool source_readable(int fd) {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR)) != 0;
}

}  // namespace

void HttpServer::start_pump(ConnectionPtr conn, HttpExchange& exchange) {
    auto pump = std::make_shared<Pump>();
    // Held until both registrations are armed: a thread woken meanwhile waits for it.
    std::lock_guard step(pump->mutex);
    pump->id = conn->id;
    pump->client_fd = conn->fd.get();
    pump->source_fd = exchange.pump_->source_fd();
    pump->body = std::move(exchange.pump_);
    pump->encoder = exchange.encoder_;
    pump->close_after = exchange.close_after_;
    pump->pending = std::move(exchange.pending_head_);
    pump->conn = std::move(conn);
    ++pump_count_;
    bool admitted = false;
    if (!exchange.broken_ && pump->source_fd >= 0) {
        std::lock_guard lock(mutex_);
        // abort() sets aborted_ before it wakes end_all_pumps(), which takes this lock: a
        // pump is either seen there or refused here.
        if (!aborted_ && !stopping_) {
            pumps_.emplace(pump->id, pump);
            admitted = true;
        }
    }
    if (admitted) {
        // Usually the worker connection the deferral before it waited on: registered still.
        // Interested in nothing yet: pump_rearm() asks for input once the first pull is done.
        pump->source_registered =
            epoll_arm(epoll_.get(), pump->source_fd, EPOLLET, pump->id | kSourceTag);
    }
    if (!pump->source_registered) {
        end_pump(*pump, true);
        return;
    }
    // One pull before any event: bytes the source already holds in its own buffer (a worker
    // connection reads some body with the response head) make the descriptor readable no more.
    pump_pull(*pump, false);
    if (!pump_flush(*pump)) {
        end_pump(*pump, true);
    } else if (pump->end != BodyPump::Step::more && pump->pending.empty()) {
        end_pump(*pump, false);
    } else if (!pump_rearm(*pump, PumpWake::timer)) {
        end_pump(*pump, true);
    }
}

void HttpServer::pump_step(Pump& pump, PumpWake wake, std::uint32_t events) {
    if (wake == PumpWake::client && (events & (EPOLLERR | EPOLLHUP | EPOLLRDHUP)) != 0) {
        end_pump(pump, true);  // the client hung up: stop the generation behind it now
        return;
    }
    const auto now = Clock::now();
    if (wake == PumpWake::timer && !pump.pending.empty() && now >= pump.write_deadline) {
        end_pump(pump, true);  // the client took nothing for write_timeout
        return;
    }
    // The source is read only while the client keeps up (the bound is checked here, not only
    // when arming: a wake armed before the client fell behind may still come).
    if (pump.end == BodyPump::Step::more && pump.pending.size() < options_.pump_buffer_bytes) {
        if (wake == PumpWake::source) {
            pump_pull(pump, false);
        } else if (wake == PumpWake::timer && now >= pump.body->deadline()) {
            // Past its deadline, a source with bytes waiting is not stalled, only not read
            // yet (the client had paused it): read it rather than time it out.
            pump_pull(pump, !source_readable(pump.source_fd));
        }
    }
    if (!pump_flush(pump)) {
        end_pump(pump, true);
        return;
    }
    if (pump.end != BodyPump::Step::more && pump.pending.empty()) {
        end_pump(pump, false);
        return;
    }
    if (!pump_rearm(pump, wake)) {
        end_pump(pump, true);
    }
}

void HttpServer::pump_pull(Pump& pump, bool timed_out) {
    pump.piece.clear();
    auto step = BodyPump::Step::aborted;
    try {
        step = timed_out ? pump.body->on_timeout(pump.piece) : pump.body->pull(pump.piece);
    } catch (const std::exception&) {
        // As for a handler that throws mid-body: the client sees a truncated response.
    }
    pump.full_pull = pump.piece.size() >= BodyPump::kPullBytes;
    pump.encoder.encode(pump.piece, pump.pending);
    if (timed_out && step == BodyPump::Step::more && pump.body->deadline() <= Clock::now()) {
        step = BodyPump::Step::aborted;  // "wait more" with no later deadline would spin
    }
    if (pump.piece.capacity() > 64 * 1024) {
        std::string().swap(pump.piece);  // a huge piece is not kept for the whole stream
    }
    if (step == BodyPump::Step::more) {
        return;
    }
    // The source is done: unwatched at once, while its descriptor is still open (it closes
    // with the pump), so that the removal cannot hit a reused descriptor number.
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, pump.source_fd, nullptr);
    pump.source_registered = false;
    pump.source_events = 0;
    if (step == BodyPump::Step::finished && !pump.encoder.end(pump.pending)) {
        step = BodyPump::Step::aborted;  // short of its Content-Length: only a cut is honest
    }
    pump.end = step;
}

bool HttpServer::pump_flush(Pump& pump) {
    std::size_t sent = 0;
    while (sent < pump.pending.size()) {
        const auto rc = ::send(pump.client_fd, pump.pending.data() + sent,
                               pump.pending.size() - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (rc > 0) {
            sent += static_cast<std::size_t>(rc);
        } else if (rc < 0 && errno == EINTR) {
            continue;
        } else if (rc < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            return false;
        }
    }
    pump.pending.erase(0, sent);
    if (pump.pending.empty()) {
        pump.write_deadline = TimePoint::max();
    } else if (sent > 0 || pump.write_deadline == TimePoint::max()) {
        pump.write_deadline = Clock::now() + options_.write_timeout;
    }
    return true;
}

bool HttpServer::pump_rearm(Pump& pump, PumpWake wake) {
    const bool polling =
        pump.end == BodyPump::Step::more && pump.pending.size() < options_.pump_buffer_bytes;
    const std::uint32_t want_source = polling ? std::uint32_t{EPOLLIN} : 0u;
    if (pump.source_registered &&
        (want_source != pump.source_events || (want_source != 0 && pump.full_pull))) {
        // A MOD that asks for input reports bytes already there, so none are missed while
        // the source was paused, or after a pull that stopped at kPullBytes.
        epoll_control(epoll_.get(), EPOLL_CTL_MOD, pump.source_fd, want_source | EPOLLET,
                      pump.id | kSourceTag);
        pump.source_events = want_source;
    }
    const bool paused = pump.end == BodyPump::Step::more && !polling;
    if (paused != pump.paused) {
        pump.paused = paused;
        paused ? ++paused_pumps_ : --paused_pumps_;
    }
    // Hang-up is watched all along, so that a client leaving a silent stream is seen at once;
    // input (a pipelined request) is left in the socket for after the body.
    const std::uint32_t client = EPOLLRDHUP | (pump.pending.empty() ? 0u : std::uint32_t{EPOLLOUT});
    if (wake == PumpWake::client || client != pump.client_events) {
        auto& conn = *pump.conn;
        if (!epoll_control(epoll_.get(), conn.registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD,
                           pump.client_fd, client | EPOLLONESHOT, pump.id)) {
            return false;
        }
        conn.registered = true;
        pump.client_events = client;
    }
    auto deadline = polling ? pump.body->deadline() : TimePoint::max();
    if (!pump.pending.empty()) {
        deadline = std::min(deadline, pump.write_deadline);
    }
    std::lock_guard lock(mutex_);
    if (pump.has_deadline) {
        // An entry no later than the new deadline stays: a stream's stall deadline moves with
        // every event, and moving the entry each time cost a tree erase and insert. A timer
        // that fires early only re-arms, since pump_step() checks the real deadlines.
        if (pump.deadline_entry->first <= deadline) {
            return true;
        }
        pump_deadlines_.erase(pump.deadline_entry);
        pump.has_deadline = false;
    }
    if (deadline != TimePoint::max()) {
        pump.deadline_entry = pump_deadlines_.emplace(deadline, pump.id);
        pump.has_deadline = true;
        if (deadline < timer_at_) {
            arm_timer_locked();
        }
    }
    return true;
}

void HttpServer::end_pump(Pump& pump, bool client_gone) {
    pump.ended = true;
    if (client_gone) {
        try {
            pump.body->on_client_gone();
        } catch (const std::exception&) {
            // Nothing to tell anyone: the pump is being dropped either way.
        }
    }
    if (pump.source_registered) {
        ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, pump.source_fd, nullptr);
        pump.source_registered = false;
    }
    pump.body.reset();  // closes the source: for the relay, the worker connection
    {
        std::lock_guard lock(mutex_);
        pumps_.erase(pump.id);
        if (pump.has_deadline) {
            pump_deadlines_.erase(pump.deadline_entry);
            pump.has_deadline = false;
        }
    }
    if (pump.paused) {
        pump.paused = false;
        --paused_pumps_;
    }
    --pump_count_;
    auto conn = std::move(pump.conn);
    const bool reusable = !client_gone && pump.end == BodyPump::Step::finished &&
                          !pump.close_after && accepting_ && !aborted_;
    request_done();
    if (reusable) {
        // As after any response: the next request is served when it comes, by whichever
        // thread wakes for it.
        conn->idle_deadline = Clock::now() + options_.keep_alive_timeout;
        if (park(conn)) {
            return;
        }
    }
    close_connection(std::move(conn), false);
}

void HttpServer::end_all_pumps() {
    std::vector<PumpPtr> all;
    {
        std::lock_guard lock(mutex_);
        for (const auto& [id, pump] : pumps_) {
            all.push_back(pump);
        }
    }
    for (const auto& pump : all) {
        std::lock_guard step(pump->mutex);
        if (!pump->ended) {
            end_pump(*pump, true);
        }
    }
}

void HttpServer::request_done() {
    if (--active_requests_ == 0) {
        // drain() tests the count under the lock: taking it here means drain() either
        // sees zero or already waits for this notification.
        { const std::lock_guard lock(mutex_); }
        idle_cv_.notify_all();
    }
}

void HttpServer::stop_accepting() {
    accepting_ = false;
    idle_wake_.notify();
}

void HttpServer::abort() {
    stop_accepting();
    aborted_ = true;
    hard_wake_.notify();
}

bool HttpServer::drain(TimePoint deadline) {
    std::unique_lock lock(mutex_);
    return idle_cv_.wait_until(lock, deadline, [this] { return active_requests_ == 0; });
}

void HttpServer::stop() {
    {
        std::lock_guard lock(mutex_);
        if (stopped_) {
            return;
        }
        stopped_ = true;
        stopping_ = true;
    }
    // The monitor tests stopping_ under threads_mutex_: taking it here means it either sees
    // the flag or already waits for this notification.
    { const std::lock_guard lock(threads_mutex_); }
    monitor_cv_.notify_one();
    if (monitor_.joinable()) {
        monitor_.join();  // before the pool threads: it may start one until it sees stopping_
    }
    abort();
    stop_wake_.notify();
    // Idle threads may retire while we collect; loop until none is left to join.
    while (true) {
        std::vector<std::thread> threads;
        {
            std::lock_guard lock(threads_mutex_);
            for (auto& [id, t] : threads_) {
                threads.push_back(std::move(t));
            }
            threads_.clear();
            for (auto& t : retired_) {
                threads.push_back(std::move(t));
            }
            retired_.clear();
        }
        if (threads.empty()) {
            break;
        }
        for (auto& t : threads) {
            t.join();
        }
    }
    // No thread is left to take the hard wake-up: pumps and deferrals still running end here.
    end_all_pumps();
    end_all_deferrals();
    std::vector<ConnectionPtr> idle;
    {
        std::lock_guard lock(mutex_);
        take_parked_locked(idle);
    }
    for (auto& conn : idle) {
        close_connection(std::move(conn), false);
    }
    listener_.reset();
}

std::size_t HttpServer::thread_count() const {
    std::lock_guard lock(threads_mutex_);
    return threads_.size();
}

}  // namespace llama_pool
