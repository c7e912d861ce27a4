#include "common/http_client.hpp"

#include <fmt/format.h>

namespace llama_pool {

HttpClientConnection HttpClientConnection::connect(const std::string& host, std::uint16_t port,
                                                   TimePoint deadline, std::string& error) {
    return HttpClientConnection(connect_tcp(host, port, deadline, error));
}

IoStatus HttpClientConnection::send_request(std::string_view method, std::string_view target,
                                            std::string_view host_header, const Headers& headers,
                                            std::string_view body, TimePoint deadline,
                                            const IoWatch& watch) {
    reusable_ = false;
    drained_ = true;  // the reply cannot be there before the request
    std::string out = fmt::format("{} {} HTTP/1.1\r\nHost: {}\r\n", method, target, host_header);
    for (const auto& [name, value] : headers.fields()) {
        out += name;
        out += ": ";
        out += value;
        out += "\r\n";
    }
    if (!body.empty() || method == "POST" || method == "PUT" || method == "PATCH") {
        out += fmt::format("Content-Length: {}\r\n", body.size());
    }
    out += "\r\n";
    // One write for small requests: the usual JSON body fits in a segment with its head.
    if (body.size() <= 64 * 1024) {
        out += body;
        return write_all(fd_.get(), out, deadline, watch);
    }
    const auto st = write_all(fd_.get(), out, deadline, watch);
    return st == IoStatus::ok ? write_all(fd_.get(), body, deadline, watch) : st;
}

IoStatus HttpClientConnection::fill(TimePoint deadline, const IoWatch& watch) {
    if (drained_ && deadline <= Clock::now()) {
        return IoStatus::timeout;  // the last read emptied the socket, and this one may not wait
    }
    char chunk[16384];
    std::size_t n = 0;
    const auto st = read_some(fd_.get(), chunk, sizeof chunk, n, deadline, watch,
                              drained_ ? ReadStart::wait_first : ReadStart::try_first);
    if (st == IoStatus::ok) {
        buffer_.append(chunk, n);
        drained_ = n < sizeof chunk;
    }
    return st;
}

IoStatus HttpClientConnection::read_head(HttpResponseHead& head, bool request_was_head,
                                         TimePoint deadline, std::string& error,
                                         const IoWatch& watch) {
    reusable_ = false;
    HeadLimits limits;
    limits.max_head_bytes = 64 * 1024;
    limits.max_line_bytes = 32 * 1024;
    while (true) {
        head = HttpResponseHead{};
        const auto parsed = parse_response_head(buffer_, limits, head);
        if (parsed.status == ParseStatus::error) {
            error = parsed.error;
            return IoStatus::error;
        }
        if (parsed.status == ParseStatus::complete) {
            buffer_.erase(0, parsed.consumed);
            const auto kind = response_kind(head.status);
            if (kind == ResponseKind::interim) {
                continue;  // 100, 102, 103...: the final response follows
            }
            if (kind == ResponseKind::unrequested_switch) {
                error = "upstream: 101 Switching Protocols, never asked for";
                return IoStatus::error;
            }
            break;
        }
        const auto st = fill(deadline, watch);
        if (st != IoStatus::ok) {
            error = buffer_.empty() ? "no response" : "incomplete response head";
            return st;
        }
    }
    const auto framing = response_framing(head, request_was_head);
    if (framing.error_status != 0) {
        error = framing.error;
        return IoStatus::error;
    }
    framing_ = framing.framing;
    remaining_ = framing_.length;
    decoder_ = ChunkedDecoder();
    const auto connection = head.headers.get("Connection");
    keep_alive_ = head.version_minor >= 1
                      ? !(connection && header_has_token(*connection, "close"))
                      : (connection && header_has_token(*connection, "keep-alive"));
    // Content-Length beside chunked coding (RFC 9112 §6.3) is read as chunked and the length
    // dropped, but such a reply may be a response-splitting attempt: the connection is not
    // reused, so nothing a differently-framing reader would see as a next reply is read.
    if (framing_.kind == BodyFraming::Kind::chunked && head.headers.has("Content-Length")) {
        keep_alive_ = false;
    }
    body_done_ = framing_.kind == BodyFraming::Kind::none;
    reusable_ = body_done_ && keep_alive_;
    return IoStatus::ok;
}

IoStatus HttpClientConnection::read_body(std::string& out, bool& done, TimePoint deadline,
                                         std::string& error, const IoWatch& watch) {
    done = body_done_;
    while (!body_done_) {
        switch (framing_.kind) {
            case BodyFraming::Kind::none:
                body_done_ = true;
                break;
            case BodyFraming::Kind::length: {
                if (!buffer_.empty()) {
                    const auto n = std::min(remaining_, buffer_.size());
                    out.append(buffer_, 0, n);
                    buffer_.erase(0, n);
                    remaining_ -= n;
                    body_done_ = remaining_ == 0;
                    done = body_done_;
                    reusable_ = body_done_ && keep_alive_ && buffer_.empty();
                    return IoStatus::ok;
                }
                const auto st = fill(deadline, watch);
                if (st != IoStatus::ok) {
                    error = "upstream body ended early";
                    return st;
                }
                break;
            }
            case BodyFraming::Kind::chunked: {
                if (!buffer_.empty()) {
                    std::size_t used = 0;
                    const auto before = out.size();
                    const auto st = decoder_.feed(buffer_, used, out);
                    buffer_.erase(0, used);
                    if (st == ChunkedDecoder::Status::error) {
                        error = "upstream chunked body: " + decoder_.error();
                        return IoStatus::error;
                    }
                    if (st == ChunkedDecoder::Status::done) {
                        body_done_ = true;
                        done = true;
                        reusable_ = keep_alive_ && buffer_.empty();
                        return IoStatus::ok;
                    }
                    if (out.size() > before) {
                        return IoStatus::ok;
                    }
                }
                const auto st = fill(deadline, watch);
                if (st != IoStatus::ok) {
                    error = "upstream chunked body ended early";
                    return st;
                }
                break;
            }
            case BodyFraming::Kind::until_close: {
                if (!buffer_.empty()) {
                    out += buffer_;
                    buffer_.clear();
                    return IoStatus::ok;
                }
                const auto st = fill(deadline, watch);
                if (st == IoStatus::eof) {
                    body_done_ = true;
                    done = true;
                    return IoStatus::ok;
                }
                if (st != IoStatus::ok) {
                    error = "upstream body read failed";
                    return st;
                }
                break;
            }
        }
    }
    done = true;
    return IoStatus::ok;
}

IoStatus HttpClientConnection::read_body_now(std::string& out, bool& done, std::string& error) {
    drained_ = false;  // try the socket before waiting, and with this deadline do not wait
    return read_body(out, done, Clock::now(), error);
}

IoStatus HttpClientConnection::read_body_more(std::string& out, bool& done, std::string& error) {
    return read_body(out, done, Clock::now(), error);
}

IoStatus HttpClientConnection::read_head_now(HttpResponseHead& head, bool request_was_head,
                                             std::string& error) {
    drained_ = false;
    return read_head(head, request_was_head, Clock::now(), error);
}

bool HttpClientConnection::stale() const {
    return !fd_.valid() || peer_closed(fd_.get());
}

std::string host_header_for(std::string_view host, std::uint16_t port) {
    const bool ipv6 = host.find(':') != std::string_view::npos && host.front() != '[';
    return ipv6 ? fmt::format("[{}]:{}", host, port) : fmt::format("{}:{}", host, port);
}

FetchResult http_fetch(const std::string& host, std::uint16_t port, std::string_view method,
                       std::string_view target, const Headers& headers, std::string_view body,
                       milliseconds timeout, std::size_t max_body_bytes, const IoWatch& watch) {
    FetchResult result;
    const auto deadline = Clock::now() + timeout;
    auto conn = HttpClientConnection::connect(host, port, deadline, result.error);
    if (!conn.connected()) {
        result.io = IoStatus::error;
        return result;
    }
    Headers request_headers = headers;
    if (!request_headers.has("Connection")) {
        request_headers.add("Connection", "close");
    }
    const auto host_header = host_header_for(host, port);
    result.io =
        conn.send_request(method, target, host_header, request_headers, body, deadline, watch);
    if (result.io != IoStatus::ok) {
        result.error = std::string("send: ") + to_string(result.io);
        return result;
    }
    HttpResponseHead head;
    result.io = conn.read_head(head, method == "HEAD", deadline, result.error, watch);
    if (result.io != IoStatus::ok) {
        if (result.error.empty()) {
            result.error = to_string(result.io);
        }
        return result;
    }
    bool done = false;
    while (!done) {
        result.io = conn.read_body(result.body, done, deadline, result.error, watch);
        if (result.io != IoStatus::ok) {
            return result;  // status stays 0: a torn body is not a usable response
        }
        if (result.body.size() > max_body_bytes) {
            result.error = "response body too large";
            result.io = IoStatus::error;
            return result;
        }
    }
    result.status = head.status;
    result.headers = std::move(head.headers);
    return result;
}

}  // namespace llama_pool
