#include "common/socket.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace llama_pool {

Fd& Fd::operator=(Fd&& other) noexcept {
    if (this != &other) {
        reset(other.release());
    }
    return *this;
}

void Fd::reset(int fd) {
    if (fd_ >= 0) {
        ::close(fd_);
    }
    fd_ = fd;
}

const char* to_string(IoStatus status) {
    switch (status) {
        case IoStatus::ok:
            return "ok";
        case IoStatus::eof:
            return "eof";
        case IoStatus::timeout:
            return "timeout";
        case IoStatus::error:
            return "error";
        case IoStatus::woken:
            return "woken";
        case IoStatus::peer_gone:
            return "peer_gone";
    }
    return "unknown";
}

namespace {

int poll_timeout_ms(TimePoint deadline) {
    const auto left = deadline - Clock::now();
    if (left <= Duration::zero()) {
        return 0;
    }
    // Round up so that we never spin with a zero timeout just before the deadline.
    const auto ms = std::chrono::duration_cast<milliseconds>(left).count() + 1;
    return ms > 60'000 ? 60'000 : static_cast<int>(ms);
}

// Waits until `fd` is ready for `events`. Returns ok, timeout, woken or peer_gone.
IoStatus wait_ready(int fd, short events, TimePoint deadline, const IoWatch& watch) {
    while (true) {
        pollfd fds[4];
        nfds_t n = 0;
        fds[n++] = {fd, events, 0};
        const int wake_index = watch.wake_fd >= 0 ? static_cast<int>(n) : -1;
        if (watch.wake_fd >= 0) {
            fds[n++] = {watch.wake_fd, POLLIN, 0};
        }
        const int cancel_index = watch.cancel_fd >= 0 ? static_cast<int>(n) : -1;
        if (watch.cancel_fd >= 0) {
            fds[n++] = {watch.cancel_fd, POLLIN, 0};
        }
        const int watch_index = watch.watch_fd >= 0 ? static_cast<int>(n) : -1;
        if (watch.watch_fd >= 0) {
            fds[n++] = {watch.watch_fd, POLLRDHUP, 0};
        }
        const int timeout = poll_timeout_ms(deadline);
        const int rc = ::poll(fds, n, timeout);
        if (rc < 0) {
            if (errno == EINTR) {
                continue;
            }
            return IoStatus::error;
        }
        if (watch_index >= 0 && (fds[watch_index].revents & (POLLRDHUP | POLLHUP | POLLERR))) {
            return IoStatus::peer_gone;
        }
        if (fds[0].revents != 0) {
            return IoStatus::ok;
        }
        if ((wake_index >= 0 && (fds[wake_index].revents & POLLIN)) ||
            (cancel_index >= 0 && (fds[cancel_index].revents & POLLIN))) {
            return IoStatus::woken;
        }
        if (rc == 0 && Clock::now() >= deadline) {
            return IoStatus::timeout;
        }
    }
}

}  // namespace

IoStatus wait_watch(const IoWatch& watch, TimePoint deadline, int readable) {
    // poll() ignores a negative descriptor, so only the watched ones can end the wait early.
    return wait_ready(readable, readable >= 0 ? POLLIN : 0, deadline, watch);
}

IoStatus read_some(int fd, char* buf, std::size_t cap, std::size_t& n, TimePoint deadline,
                   const IoWatch& watch, ReadStart start) {
    n = 0;
    if (start == ReadStart::wait_first) {
        const auto ready = wait_ready(fd, POLLIN, deadline, watch);
        if (ready != IoStatus::ok) {
            return ready;
        }
    }
    while (true) {
        const auto rc = ::recv(fd, buf, cap, MSG_DONTWAIT);
        if (rc > 0) {
            n = static_cast<std::size_t>(rc);
            return IoStatus::ok;
        }
        if (rc == 0) {
            return IoStatus::eof;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            return IoStatus::error;
        }
        if (deadline <= Clock::now()) {
            return IoStatus::timeout;  // a read that may not wait: no poll() to learn it
        }
        const auto ready = wait_ready(fd, POLLIN, deadline, watch);
        if (ready != IoStatus::ok) {
            return ready;
        }
    }
}

IoStatus write_all(int fd, std::string_view data, TimePoint deadline, const IoWatch& watch) {
    while (!data.empty()) {
        const auto rc = ::send(fd, data.data(), data.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
        if (rc > 0) {
            data.remove_prefix(static_cast<std::size_t>(rc));
            continue;
        }
        if (rc < 0 && errno == EINTR) {
            continue;
        }
        if (rc < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            return errno == EPIPE || errno == ECONNRESET ? IoStatus::eof : IoStatus::error;
        }
        const auto ready = wait_ready(fd, POLLOUT, deadline, watch);
        if (ready != IoStatus::ok) {
            return ready;
        }
    }
    return IoStatus::ok;
}

bool peer_closed(int fd) {
    pollfd p{fd, POLLRDHUP, 0};
    return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

namespace {

bool resolve(const std::string& host, std::uint16_t port, sockaddr_storage& out, socklen_t& len,
             std::string& error) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    addrinfo* res = nullptr;
    const auto service = std::to_string(port);
    const int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &res);
    if (rc != 0 || res == nullptr) {
        error = "cannot resolve '" + host + "': " + ::gai_strerror(rc);
        return false;
    }
    std::memcpy(&out, res->ai_addr, res->ai_addrlen);
    len = res->ai_addrlen;
    ::freeaddrinfo(res);
    return true;
}

}  // namespace

Fd listen_tcp(const std::string& host, std::uint16_t port, int backlog, std::string& error) {
    sockaddr_storage addr{};
    socklen_t len = 0;
    if (!resolve(host, port, addr, len, error)) {
        return {};
    }
    Fd fd(::socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd.valid()) {
        error = std::string("socket: ") + std::strerror(errno);
        return {};
    }
    const int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0) {
        error = "bind " + host + ":" + std::to_string(port) + ": " + std::strerror(errno);
        return {};
    }
    if (::listen(fd.get(), backlog) != 0) {
        error = std::string("listen: ") + std::strerror(errno);
        return {};
    }
    return fd;
}

Fd connect_tcp(const std::string& host, std::uint16_t port, TimePoint deadline,
               std::string& error) {
    sockaddr_storage addr{};
    socklen_t len = 0;
    if (!resolve(host, port, addr, len, error)) {
        return {};
    }
    Fd fd(::socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd.valid()) {
        error = std::string("socket: ") + std::strerror(errno);
        return {};
    }
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0) {
        if (errno != EINPROGRESS) {
            error = std::string("connect: ") + std::strerror(errno);
            return {};
        }
        const auto ready = wait_ready(fd.get(), POLLOUT, deadline, {});
        if (ready != IoStatus::ok) {
            error = "connect: timed out";
            return {};
        }
        int so_error = 0;
        socklen_t so_len = sizeof so_error;
        ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &so_error, &so_len);
        if (so_error != 0) {
            error = std::string("connect: ") + std::strerror(so_error);
            return {};
        }
    }
    const int one = 1;
    ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

std::uint16_t local_port(int fd) {
    sockaddr_storage addr{};
    socklen_t len = sizeof addr;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
        return 0;
    }
    if (addr.ss_family == AF_INET) {
        return ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
    }
    return ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
}

std::string peer_address(int fd) {
    sockaddr_storage addr{};
    socklen_t len = sizeof addr;
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
        return "unknown";
    }
    return address_text(addr);
}

std::string address_text(const sockaddr_storage& addr) {
    char text[INET6_ADDRSTRLEN] = {};
    if (addr.ss_family == AF_INET) {
        ::inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&addr)->sin_addr, text,
                    sizeof text);
    } else if (addr.ss_family == AF_INET6) {
        ::inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_addr, text,
                    sizeof text);
    } else {
        return "unknown";
    }
    return text;
}

bool is_loopback_address(std::string_view address) {
    constexpr std::string_view mapped = "::ffff:";
    if (address.size() > mapped.size() && address.substr(0, mapped.size()) == mapped) {
        address.remove_prefix(mapped.size());
    }
    if (address == "::1") {
        return true;
    }
    in_addr v4{};
    return ::inet_pton(AF_INET, std::string(address).c_str(), &v4) == 1 &&
           (ntohl(v4.s_addr) >> 24) == 127;
}

std::vector<std::string> resolve_all(const std::string& name, std::string& error) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    const int rc = ::getaddrinfo(name.c_str(), nullptr, &hints, &res);
    if (rc != 0) {
        error = "cannot resolve '" + name + "': " + ::gai_strerror(rc);
        return {};
    }
    std::vector<std::string> out;
    for (auto* ai = res; ai != nullptr; ai = ai->ai_next) {
        char text[INET6_ADDRSTRLEN] = {};
        const void* addr =
            ai->ai_family == AF_INET
                ? static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(ai->ai_addr)->sin_addr)
                : static_cast<const void*>(
                      &reinterpret_cast<sockaddr_in6*>(ai->ai_addr)->sin6_addr);
        if (::inet_ntop(ai->ai_family, addr, text, sizeof text) != nullptr) {
            out.emplace_back(text);
        }
    }
    ::freeaddrinfo(res);
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
}

std::uint16_t pick_free_port(const std::string& host) {
    std::string error;
    auto fd = listen_tcp(host, 0, 1, error);
    return fd.valid() ? local_port(fd.get()) : 0;
}

WakeSignal::WakeSignal() : fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
    if (!fd_.valid()) {
        throw std::runtime_error(std::string("eventfd: ") + std::strerror(errno));
    }
}

void WakeSignal::notify() {
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto rc = ::write(fd_.get(), &one, sizeof one);
}

void WakeSignal::clear() {
    std::uint64_t value = 0;
    [[maybe_unused]] const auto rc = ::read(fd_.get(), &value, sizeof value);
}

bool WakeSignal::notified() const {
    pollfd p{fd_.get(), POLLIN, 0};
    return ::poll(&p, 1, 0) > 0;
}

FdLimit raise_fd_limit() {
    FdLimit out;
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) {
        return out;
    }
    out.before = limit.rlim_cur;
    out.after = limit.rlim_cur;
    if (limit.rlim_cur < limit.rlim_max) {
        const auto before = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        if (::setrlimit(RLIMIT_NOFILE, &limit) == 0) {
            out.after = limit.rlim_cur;
        } else {
            out.after = before;
        }
    }
    return out;
}

}  // namespace llama_pool
