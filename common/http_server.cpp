#include "common/http_server.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

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
    if (content_length) {
        headers.add("Content-Length", std::to_string(*content_length));
        length_left_ = bodiless ? 0 : *content_length;
    } else if (request_.version_minor >= 1 && !bodiless) {
        headers.add("Transfer-Encoding", "chunked");
        chunked_ = true;
    } else {
        close_after_ = true;  // HTTP/1.0 has no chunked coding: the close ends the body
    }
    if (!request_.keep_alive()) {
        close_after_ = true;
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
    port_ = local_port(listener_.get());
    reserve_fd_ = Fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    accepting_ = true;
    accept_thread_ = std::thread([this] { accept_loop(); });
    return true;
}

void HttpServer::accept_loop() {
    while (accepting_) {
        pollfd fds[2] = {{listener_.get(), POLLIN, 0}, {accept_wake_.fd(), POLLIN, 0}};
        const int rc = ::poll(fds, 2, 1000);
        std::vector<std::thread> to_join;
        {
            std::lock_guard lock(mutex_);
            reap_finished_locked(to_join);
        }
        for (auto& t : to_join) {
            t.join();
        }
        if (rc <= 0 || (fds[1].revents & POLLIN)) {
            continue;
        }
        Fd client(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
        if (!client.valid()) {
            if (errno == EMFILE || errno == ENFILE) {
                shed_pending_connection();
            }
            continue;
        }
        // A relay writes pieces as they arrive; Nagle would hold each small write back until
        // the client's delayed ACK (40 ms), once per response.
        const int one = 1;
        ::setsockopt(client.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        std::lock_guard lock(mutex_);
        if (connections_.size() >= options_.max_connections) {
            // Over the connection limit: a clean 503 is better than a silent backlog.
            refuse(client.get(), "too many open connections");
            continue;
        }
        const auto id = next_id_++;
        auto& conn = connections_[id];
        conn.fd = client.get();
        conn.thread = std::thread(
            [this, id, fd = std::move(client)]() mutable { serve_connection(id, std::move(fd)); });
    }
    listener_.reset();
}

void HttpServer::reap_finished_locked(std::vector<std::thread>& to_join) {
    for (const auto id : finished_) {
        auto it = connections_.find(id);
        if (it != connections_.end()) {
            to_join.push_back(std::move(it->second.thread));
            connections_.erase(it);
        }
    }
    finished_.clear();
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

void HttpServer::shed_pending_connection() {
    reserve_fd_.reset();
    bool shed_one = false;
    {
        Fd shed(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
        if (shed.valid()) {
            refuse(shed.get(), "the pool is out of file descriptors, retry later");
            shed_one = true;
        }
    }
    reserve_fd_ = Fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (!shed_one || !reserve_fd_.valid()) {
        // Not even that worked: wait a moment rather than spin on a listener that stays
        // readable.
        pollfd wake{accept_wake_.fd(), POLLIN, 0};
        ::poll(&wake, 1, 10);
    }
}

bool HttpServer::read_request(Fd& fd, std::string& buffer, HttpRequest& request, bool first,
                              int& error_status, std::string& error) {
    // Idle wait for the first byte of the next request.
    if (buffer.empty()) {
        const auto idle_deadline =
            Clock::now() + (first ? options_.head_timeout : options_.keep_alive_timeout);
        char probe[8192];
        std::size_t n = 0;
        const auto status =
            read_some(fd.get(), probe, sizeof probe, n, idle_deadline, {idle_wake_.fd(), -1});
        if (status != IoStatus::ok) {
            if (status == IoStatus::timeout && first) {
                error_status = 408;
                error = "no request received in time";
            }
            return false;
        }
        buffer.append(probe, n);
    }
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
            read_some(fd.get(), chunk, sizeof chunk, n, head_deadline, {hard_wake_.fd(), -1});
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
                write_all(fd.get(), "HTTP/1.1 100 Continue\r\n\r\n",
                          Clock::now() + options_.write_timeout, {hard_wake_.fd(), -1});
            }
        }
    }
    if (kind != BodyFraming::Kind::none && buffer.empty()) {
        // The head came without its body. A client that writes head and body separately
        // with Nagle on (cpp-httplib does) holds the body back until this head is ACKed, and
        // a delayed ACK costs it 40 ms per request: acknowledge at once.
        const int one = 1;
        ::setsockopt(fd.get(), IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
    }
    const auto body_deadline = Clock::now() + options_.body_timeout;
    ChunkedDecoder decoder;
    auto need_more = [&]() -> bool {
        char chunk[16384];
        std::size_t n = 0;
        const auto status =
            read_some(fd.get(), chunk, sizeof chunk, n, body_deadline, {hard_wake_.fd(), -1});
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

void HttpServer::serve_connection(std::uint64_t id, Fd fd) {
    const auto remote = peer_address(fd.get());
    std::string buffer;
    bool first = true;
    while (!hard_wake_.notified()) {
        HttpExchange exchange(fd.get(), hard_wake_.fd(), remote, options_.write_timeout);
        int error_status = 0;
        std::string error;
        if (!read_request(fd, buffer, exchange.request(), first, error_status, error)) {
            if (error_status != 0) {
                send_error(fd.get(), error_status, error);
            }
            break;
        }
        first = false;
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
        {
            std::lock_guard lock(mutex_);
            --active_requests_;
        }
        idle_cv_.notify_all();
        if (!reusable || !accepting_) {
            break;
        }
    }
    ::shutdown(fd.get(), SHUT_RDWR);
    fd.reset();
    std::lock_guard lock(mutex_);
    finished_.push_back(id);
    connections_[id].fd = -1;
}

void HttpServer::stop_accepting() {
    accepting_ = false;
    accept_wake_.notify();
    idle_wake_.notify();
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
    }
    stop_accepting();
    hard_wake_.notify();
    if (accept_thread_.joinable()) {
        accept_thread_.join();
    }
    std::vector<std::thread> threads;
    {
        std::lock_guard lock(mutex_);
        for (auto& [id, conn] : connections_) {
            threads.push_back(std::move(conn.thread));
        }
    }
    for (auto& t : threads) {
        if (t.joinable()) {
            t.join();
        }
    }
    std::lock_guard lock(mutex_);
    connections_.clear();
    finished_.clear();
}

std::size_t HttpServer::open_connections() const {
    std::lock_guard lock(mutex_);
    return connections_.size() - finished_.size();
}

}  // namespace llama_pool
