// A minimal SSE relay on Boost.Asio, for one measurement only (issue 18: event loop on Asio
// or on the project's own epoll). It is a cost probe, not a proxy: it reads a request head
// up to the blank line and a Content-Length body, sends them unchanged to one upstream over
// a keep-alive connection, and relays the response as it arrives. It checks nothing a real
// proxy must (no smuggling rules, no limits, no deadlines, no retries), so its numbers are a
// floor for what an Asio data path could cost, not a competitor to llama-pool's features.
// Nor does it watch the client while a response streams: a client that leaves is noticed at
// the next write, where the pool notices at once and cancels the worker's generation.
//
// Shape: one io_context per thread (--threads, default 2), each with its own pool of idle
// upstream connections, so no lock is taken on the data path. The acceptor lives on the
// first context and hands connections out in turn. Backpressure: upstream reads stop while
// more than 64 KiB wait to be written to the client. A stream waits for its upstream socket
// to be readable without a buffer (async_wait), then reads into its context's one buffer.
//
// usage: asio_relay_bench --port P --upstream HOST:PORT [--threads N]

// Boost 1.74's asio/awaitable.hpp uses std::exchange without including <utility>, which
// C++20 headers no longer pull in by chance: it must come first.
// clang-format off
#include <utility>
// clang-format on

#include <algorithm>
#include <boost/asio.hpp>
#include <cctype>
#include <charconv>
#include <csignal>
#include <cstdio>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;

constexpr std::size_t kMaxPending = 64 * 1024;  // client bytes queued before upstream pauses
constexpr std::size_t kReadSize = 16 * 1024;

bool iequals_prefix(std::string_view line, std::string_view name) {
    if (line.size() < name.size()) {
        return false;
    }
    for (std::size_t i = 0; i < name.size(); ++i) {
        const auto a = static_cast<char>(std::tolower(static_cast<unsigned char>(line[i])));
        if (a != name[i]) {
            return false;
        }
    }
    return true;
}

// The few facts of a head the relay needs: a Content-Length, chunked, Connection: close.
struct HeadFacts {
    std::size_t content_length = 0;
    bool has_length = false;
    bool chunked = false;
    bool close = false;
};

HeadFacts scan_head(std::string_view head) {
    HeadFacts f;
    std::size_t pos = head.find('\n');
    while (pos != std::string_view::npos && pos + 1 < head.size()) {
        const auto end = head.find('\n', pos + 1);
        auto line = head.substr(pos + 1, end == std::string_view::npos ? end : end - pos - 1);
        if (iequals_prefix(line, "content-length:")) {
            auto v = line.substr(15);
            while (!v.empty() && v.front() == ' ') {
                v.remove_prefix(1);
            }
            std::from_chars(v.data(), v.data() + v.size(), f.content_length);
            f.has_length = true;
        } else if (iequals_prefix(line, "transfer-encoding:")) {
            f.chunked = line.find("chunked") != std::string_view::npos;
        } else if (iequals_prefix(line, "connection:")) {
            f.close = line.find("close") != std::string_view::npos;
        }
        pos = end;
    }
    return f;
}

// Finds where a chunked body ends while its bytes pass through unchanged. It follows size
// lines and skips data; trailers are taken to be absent (llama-server sends none).
class ChunkTracker {
  public:
    // Returns how many bytes of `in` belong to the body; done() once the last chunk ended.
    std::size_t feed(std::string_view in) {
        std::size_t i = 0;
        while (i < in.size() && state_ != State::done) {
            const char c = in[i];
            switch (state_) {
                case State::size:
                    if (c == '\n') {
                        state_ = size_ == 0 ? State::last_crlf : State::data;
                    } else if (!seen_ext_ && std::isxdigit(static_cast<unsigned char>(c))) {
                        size_ = size_ * 16 + static_cast<std::size_t>(hex(c));
                    } else if (c != '\r') {
                        seen_ext_ = true;
                    }
                    ++i;
                    break;
                case State::data: {
                    const auto take = std::min(size_, in.size() - i);
                    size_ -= take;
                    i += take;
                    if (size_ == 0) {
                        state_ = State::data_crlf;
                    }
                    break;
                }
                case State::data_crlf:
                    if (c == '\n') {
                        state_ = State::size;
                        seen_ext_ = false;
                    }
                    ++i;
                    break;
                case State::last_crlf:
                    if (c == '\n') {
                        state_ = State::done;
                    }
                    ++i;
                    break;
                case State::done:
                    break;
            }
        }
        return i;
    }
    bool done() const { return state_ == State::done; }

  private:
    static int hex(char c) {
        return c <= '9' ? c - '0' : (std::tolower(static_cast<unsigned char>(c)) - 'a' + 10);
    }
    enum class State { size, data, data_crlf, last_crlf, done };
    State state_ = State::size;
    std::size_t size_ = 0;
    bool seen_ext_ = false;
};

// Idle keep-alive upstream connections of one io_context; touched only by its thread.
class UpstreamPool {
  public:
    UpstreamPool(asio::io_context& io, tcp::endpoint upstream) : io_(io), upstream_(upstream) {}
    tcp::endpoint endpoint() const { return upstream_; }
    std::unique_ptr<tcp::socket> take() {
        if (idle_.empty()) {
            return std::make_unique<tcp::socket>(io_);
        }
        auto s = std::move(idle_.back());
        idle_.pop_back();
        return s;
    }
    void give_back(std::unique_ptr<tcp::socket> s) { idle_.push_back(std::move(s)); }
    // One read buffer for every stream of this context: a stream waits for readiness with
    // no buffer and reads into this one, so 1000 quiet streams do not hold 1000 buffers.
    std::string& scratch() { return scratch_; }

  private:
    asio::io_context& io_;
    tcp::endpoint upstream_;
    std::vector<std::unique_ptr<tcp::socket>> idle_;
    std::string scratch_ = std::string(kReadSize, '\0');
};

// One client connection, request after request. Owned by the shared_ptr its pending
// handlers hold; it ends when the last handler returns without scheduling another.
class Session : public std::enable_shared_from_this<Session> {
  public:
    Session(tcp::socket client, UpstreamPool& pool) : client_(std::move(client)), pool_(pool) {}
    void start() { read_request_head(); }

  private:
    void read_request_head() {
        asio::async_read_until(client_, asio::dynamic_buffer(in_), "\r\n\r\n",
                               [self = shared_from_this()](error_code ec, std::size_t n) {
                                   if (!ec) {
                                       self->got_request_head(n);
                                   }
                               });
    }

    void got_request_head(std::size_t head_size) {
        const auto facts = scan_head(std::string_view(in_).substr(0, head_size));
        client_close_ = facts.close;
        const auto want = head_size + (facts.has_length ? facts.content_length : 0);
        if (in_.size() >= want) {
            return send_upstream(want);
        }
        asio::async_read(client_, asio::dynamic_buffer(in_),
                         asio::transfer_exactly(want - in_.size()),
                         [self = shared_from_this(), want](error_code ec, std::size_t) {
                             if (!ec) {
                                 self->send_upstream(want);
                             }
                         });
    }

    void send_upstream(std::size_t request_size) {
        request_ = in_.substr(0, request_size);
        in_.erase(0, request_size);
        upstream_ = pool_.take();
        if (upstream_->is_open()) {
            return write_upstream(true);
        }
        upstream_->async_connect(pool_.endpoint(), [self = shared_from_this()](error_code ec) {
            if (!ec) {
                self->upstream_->set_option(tcp::no_delay(true));
                self->write_upstream(false);
            }
        });
    }

    void write_upstream(bool reused) {
        asio::async_write(
            *upstream_, asio::buffer(request_),
            [self = shared_from_this(), reused](error_code ec, std::size_t) {
                if (ec && reused) {
                    // A pooled connection the upstream closed: once on a new one.
                    self->upstream_ = std::make_unique<tcp::socket>(self->client_.get_executor());
                    self->upstream_->async_connect(self->pool_.endpoint(), [self](error_code ec2) {
                        if (!ec2) {
                            self->write_upstream(false);
                        }
                    });
                } else if (!ec) {
                    self->read_response_head();
                }
            });
    }

    void read_response_head() {
        up_in_.clear();
        asio::async_read_until(*upstream_, asio::dynamic_buffer(up_in_), "\r\n\r\n",
                               [self = shared_from_this()](error_code ec, std::size_t n) {
                                   if (!ec) {
                                       self->got_response_head(n);
                                   }
                               });
    }

    void got_response_head(std::size_t head_size) {
        const auto facts = scan_head(std::string_view(up_in_).substr(0, head_size));
        upstream_close_ = facts.close;
        chunked_ = facts.chunked;
        remaining_ = facts.has_length ? facts.content_length : 0;
        tracker_ = ChunkTracker{};
        std::string head = up_in_.substr(0, head_size);
        std::string rest = up_in_.substr(head_size);
        queue_write(std::move(head));
        relay_body(std::move(rest));
    }

    // Bytes of the response body arrived: passed on unchanged, and the end looked for.
    void relay_body(std::string bytes) {
        std::size_t used = bytes.size();
        if (chunked_) {
            used = tracker_.feed(bytes);
        } else {
            used = std::min(used, remaining_);
            remaining_ -= used;
        }
        bytes.resize(used);
        if (!bytes.empty()) {
            queue_write(std::move(bytes));
        }
        if (chunked_ ? tracker_.done() : remaining_ == 0) {
            response_done_ = true;
            if (!upstream_close_) {
                pool_.give_back(std::move(upstream_));
            }
            upstream_.reset();
            maybe_next_request();
            return;
        }
        if (pending_ <= kMaxPending) {
            read_upstream();
        } else {
            paused_ = true;
        }
    }

    void read_upstream() {
        upstream_->async_wait(tcp::socket::wait_read, [self = shared_from_this()](error_code ec) {
            if (!ec) {
                auto& scratch = self->pool_.scratch();
                self->upstream_->non_blocking(true);
                const auto n = self->upstream_->read_some(asio::buffer(scratch), ec);
                if (ec == asio::error::would_block) {
                    return self->read_upstream();
                }
                if (!ec) {
                    return self->relay_body(scratch.substr(0, n));
                }
            }
            self->client_.close();
        });
    }

    void queue_write(std::string bytes) {
        pending_ += bytes.size();
        out_.push_back(std::move(bytes));
        if (!writing_) {
            write_next();
        }
    }

    void write_next() {
        writing_ = true;
        asio::async_write(
            client_, asio::buffer(out_.front()),
            [self = shared_from_this()](error_code ec, std::size_t n) { self->wrote(ec, n); });
    }

    void wrote(error_code ec, std::size_t n) {
        writing_ = false;
        if (ec) {
            // The client left: drop the upstream connection (its response is unfinished).
            if (upstream_) {
                upstream_->close();
            }
            return;
        }
        pending_ -= n;
        out_.pop_front();
        if (!out_.empty()) {
            write_next();
        }
        if (paused_ && pending_ <= kMaxPending) {
            paused_ = false;
            read_upstream();
        }
        maybe_next_request();
    }

    void maybe_next_request() {
        if (!response_done_ || writing_) {
            return;
        }
        response_done_ = false;
        if (client_close_) {
            error_code ignored;
            client_.shutdown(tcp::socket::shutdown_send, ignored);
            return;
        }
        read_request_head();
    }

    tcp::socket client_;
    UpstreamPool& pool_;
    std::unique_ptr<tcp::socket> upstream_;
    std::string in_, request_, up_in_;
    std::deque<std::string> out_;
    std::size_t pending_ = 0;
    std::size_t remaining_ = 0;
    ChunkTracker tracker_;
    bool chunked_ = false, upstream_close_ = false, client_close_ = false;
    bool writing_ = false, paused_ = false, response_done_ = false;
};

struct Worker {
    asio::io_context io{1};  // one thread runs it: Asio may skip its locking
    std::unique_ptr<UpstreamPool> pool;
};

void accept_next(tcp::acceptor& acceptor, std::vector<std::unique_ptr<Worker>>& workers,
                 std::size_t next) {
    auto& w = *workers[next % workers.size()];
    acceptor.async_accept(w.io, [&acceptor, &workers, &w, next](error_code ec, tcp::socket s) {
        if (!ec) {
            s.set_option(tcp::no_delay(true));
            std::make_shared<Session>(std::move(s), *w.pool)->start();
        }
        accept_next(acceptor, workers, next + 1);
    });
}

}  // namespace

int main(int argc, char** argv) {
    std::uint16_t port = 0;
    std::string upstream = "127.0.0.1:8080";
    std::size_t threads = 2;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string_view a = argv[i];
        if (a == "--port") {
            port = static_cast<std::uint16_t>(std::stoi(argv[i + 1]));
        } else if (a == "--upstream") {
            upstream = argv[i + 1];
        } else if (a == "--threads") {
            threads = std::max(1, std::stoi(argv[i + 1]));
        }
    }
    const auto colon = upstream.rfind(':');
    const tcp::endpoint up(asio::ip::make_address(upstream.substr(0, colon)),
                           static_cast<std::uint16_t>(std::stoi(upstream.substr(colon + 1))));

    std::vector<std::unique_ptr<Worker>> workers;
    for (std::size_t i = 0; i < threads; ++i) {
        workers.push_back(std::make_unique<Worker>());
        workers.back()->pool = std::make_unique<UpstreamPool>(workers.back()->io, up);
    }
    tcp::acceptor acceptor(workers[0]->io,
                           tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
    accept_next(acceptor, workers, 0);
    asio::signal_set signals(workers[0]->io, SIGINT, SIGTERM);
    signals.async_wait([&](error_code, int) {
        for (auto& w : workers) {
            w->io.stop();
        }
    });
    std::signal(SIGPIPE, SIG_IGN);
    std::fprintf(stderr, "asio_relay_bench: listening on 127.0.0.1:%u\n",
                 acceptor.local_endpoint().port());
    std::vector<std::jthread> runners;
    for (std::size_t i = 1; i < workers.size(); ++i) {
        auto& io = workers[i]->io;
        runners.emplace_back([&io] {
            auto guard = asio::make_work_guard(io);
            io.run();
        });
    }
    workers[0]->io.run();
    for (auto& w : workers) {
        w->io.stop();
    }
    return 0;
}
