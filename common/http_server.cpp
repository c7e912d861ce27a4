#include "common/http_server.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

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
constexpr std::uint64_t kFirstConnectionKey = 4;

bool epoll_control(int epoll_fd, int op, int fd, std::uint32_t events, std::uint64_t key) {
    epoll_event event{};
    event.events = events;
    event.data.u64 = key;
    return ::epoll_ctl(epoll_fd, op, fd, &event) == 0;
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
    if (head_sent_) {
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
        length_left_ = 0;
    } else if (content_length) {
        headers.add("Content-Length", std::to_string(*content_length));
        length_left_ = bodiless ? 0 : *content_length;
    } else if (request_.version_minor >= 1 && !bodiless) {
        headers.add("Transfer-Encoding", "chunked");
        chunked_ = true;
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

bool HttpExchange::write(std::string_view data) {
    if (!head_sent_ || finished_) {
        return false;
    }
    std::string out = std::move(pending_head_);
    pending_head_.clear();
    if (chunked_) {
        if (!data.empty()) {
            out += fmt::format("{:x}\r\n", data.size());
            out += data;
            out += "\r\n";
        }
    } else if (length_left_) {
        const auto n = std::min(*length_left_, data.size());
        out += data.substr(0, n);
        *length_left_ -= n;
    } else {
        out += data;
    }
    return out.empty() || send(out);
}

bool HttpExchange::finish() {
    if (!head_sent_ || finished_) {
        return !broken_;
    }
    if (!pending_head_.empty() && !write({})) {
        return false;
    }
    finished_ = true;
    if (chunked_) {
        return send("0\r\n\r\n");
    }
    if (length_left_ && *length_left_ > 0) {
        broken_ = true;  // the promised length was not delivered; only closing is honest
        return false;
    }
    return !broken_;
}

bool HttpExchange::write_raw(std::string_view bytes) {
    head_sent_ = true;
    return send(bytes);
}

bool HttpExchange::client_gone() const {
    return peer_closed(fd_);
}

struct HttpServer::Connection {
    Fd fd;
    std::uint64_t id = 0;
    std::string remote;
    std::string buffer;       // received and not parsed yet: the start of the next request
    bool first = true;        // nothing served yet: an idle timeout is answered with 408
    bool registered = false;  // known to epoll (re-armed with EPOLL_CTL_MOD from then on)
    TimePoint idle_deadline;  // the next request's first byte must arrive by then
    std::multimap<TimePoint, std::uint64_t>::iterator deadline_entry;  // while parked
};

HttpServer::HttpServer(HttpServerOptions options, HttpHandler handler)
    : options_(std::move(options)), handler_(std::move(handler)) {}

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
        !epoll_control(epoll_.get(), EPOLL_CTL_ADD, stop_wake_.fd(), EPOLLIN, kStopKey)) {
        error = std::string("epoll: ") + std::strerror(errno);
        listener_.reset();
        return false;
    }
    accepting_ = true;
    std::lock_guard lock(mutex_);
    spawn_thread_locked();
    if (threads_.empty()) {
        error = "cannot start a server thread";
        return false;
    }
    return true;
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
    std::unique_lock lock(mutex_);
    while (!stopping_) {
        std::vector<std::thread> retired;
        retired.swap(retired_);
        ++waiting_threads_;
        lock.unlock();
        for (auto& t : retired) {
            t.join();
        }
        epoll_event event{};
        const int n = ::epoll_wait(epoll_.get(), &event, 1, idle_ms);
        auto conn = n == 1 ? on_event(event.data.u64) : nullptr;
        lock.lock();
        --waiting_threads_;
        if (n == 0 && !stopping_ &&
            waiting_threads_ >= std::max<std::size_t>(1, options_.spare_threads)) {
            // Enough threads wait without this one; another thread joins it.
            const auto it = threads_.find(self);
            retired_.push_back(std::move(it->second));
            threads_.erase(it);
            return;
        }
        if (!conn) {
            continue;
        }
        // Someone must wait for the next event while this thread serves.
        if (waiting_threads_ == 0) {
            spawn_thread_locked();
        }
        lock.unlock();
        serve(std::move(conn));
        lock.lock();
    }
}

HttpServer::ConnectionPtr HttpServer::on_event(std::uint64_t key) {
    switch (key) {
        case kListenerKey:
            return accept_one();
        case kIdleWakeKey:
            on_stop_accepting();
            return nullptr;
        case kTimerKey:
            on_timer();
            return nullptr;
        case kStopKey:
            return nullptr;
        default:
            break;
    }
    std::lock_guard lock(mutex_);
    const auto it = parked_.find(key);
    if (it == parked_.end()) {
        return nullptr;  // closed meanwhile (deadline, stop_accepting)
    }
    auto conn = std::move(it->second);
    parked_.erase(it);
    deadlines_.erase(conn->deadline_entry);
    return conn;
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
    if (open_connections_.load() >= options_.max_connections) {
        // Over the connection limit: a clean 503 is better than a silent backlog.
        refuse(client.get(), "too many open connections");
        return nullptr;
    }
    ++open_connections_;
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

void HttpServer::on_timer() {
    std::uint64_t expirations = 0;
    [[maybe_unused]] const auto rc = ::read(timer_.get(), &expirations, sizeof expirations);
    std::vector<ConnectionPtr> expired;
    {
        std::lock_guard lock(mutex_);
        const auto now = Clock::now();
        while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
            const auto it = parked_.find(deadlines_.begin()->second);
            deadlines_.erase(deadlines_.begin());
            expired.push_back(std::move(it->second));
            parked_.erase(it);
        }
        timer_at_ = TimePoint::min();  // set it again whatever it was
        arm_timer_locked();
        epoll_control(epoll_.get(), EPOLL_CTL_MOD, timer_.get(), EPOLLIN | EPOLLONESHOT, kTimerKey);
    }
    for (auto& conn : expired) {
        close_connection(std::move(conn), true);
    }
}

void HttpServer::arm_timer_locked() {
    const auto next = deadlines_.empty() ? TimePoint::max() : deadlines_.begin()->first;
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
    // Armed last, with the connection already findable: a thread may see it at once.
    if (!epoll_control(epoll_.get(), registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd,
                       EPOLLIN | EPOLLRDHUP | EPOLLONESHOT, id)) {
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
    ::shutdown(conn->fd.get(), SHUT_RDWR);
    conn->fd.reset();
    --open_connections_;
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
    auto start = ReadStart::try_first;
    while (!aborted_) {
        if (conn->buffer.empty()) {
            // Wait here a little for the next request (a back-to-back client sends it at once),
            // then leave the idle connection to epoll and free this thread.
            const auto until =
                std::min(conn->idle_deadline, Clock::now() + options_.keep_alive_linger);
            char probe[8192];
            std::size_t n = 0;
            const auto status = read_some(conn->fd.get(), probe, sizeof probe, n, until,
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
        HttpExchange exchange(conn->fd.get(), hard_wake_.fd(), conn->remote, options_.write_timeout,
                              accepting_);
        int error_status = 0;
        std::string error;
        if (!read_request(*conn, exchange.request(), error_status, error)) {
            if (error_status != 0) {
                send_error(conn->fd.get(), error_status, error);
            }
            break;
        }
        conn->first = false;
        ++active_requests_;
        try {
            handler_(exchange);
        } catch (const std::exception& e) {
            if (!exchange.responded()) {
                Headers headers;
                headers.add("Content-Type", "application/json; charset=utf-8");
                exchange.respond(500, headers, make_error_body(500, e.what()));
            } else {
                exchange.abort();
            }
        }
        if (!exchange.responded()) {
            Headers headers;
            headers.add("Content-Type", "application/json; charset=utf-8");
            exchange.respond(500, headers, make_error_body(500, "handler sent no response"));
        }
        const bool reusable = exchange.finish() && !exchange.close_after_;
        if (--active_requests_ == 0) {
            // drain() tests the count under the lock: taking it here means drain() either
            // sees zero or already waits for this notification.
            { const std::lock_guard lock(mutex_); }
            idle_cv_.notify_all();
        }
        if (!reusable || !accepting_) {
            break;
        }
        conn->idle_deadline = Clock::now() + options_.keep_alive_timeout;
        start = ReadStart::wait_first;
    }
    close_connection(std::move(conn), false);
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
    abort();
    stop_wake_.notify();
    // Idle threads may retire while we collect; loop until none is left to join.
    while (true) {
        std::vector<std::thread> threads;
        {
            std::lock_guard lock(mutex_);
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
    std::lock_guard lock(mutex_);
    return threads_.size();
}

}  // namespace llama_pool
