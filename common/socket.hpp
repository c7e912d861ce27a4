#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.hpp"

struct sockaddr_storage;

namespace llama_pool {

// Owns one file descriptor; closes it on destruction. Move-only.
class Fd {
  public:
    Fd() = default;
    explicit Fd(int fd) : fd_(fd) {}
    Fd(Fd&& other) noexcept : fd_(other.release()) {}
    Fd& operator=(Fd&& other) noexcept;
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    ~Fd() { reset(); }

    int get() const { return fd_; }
    bool valid() const { return fd_ >= 0; }
    int release() {
        const int fd = fd_;
        fd_ = -1;
        return fd;
    }
    void reset(int fd = -1);

  private:
    int fd_ = -1;
};

enum class IoStatus {
    ok,
    eof,        // orderly close by the peer
    timeout,    // the deadline passed
    error,      // reset or another socket error
    woken,      // the wake fd became readable (shutdown)
    peer_gone,  // the watched fd's peer went away (client disconnect during a relay)
};

const char* to_string(IoStatus status);

// Extra descriptors a blocking operation watches besides its own: `wake_fd` (an eventfd
// that signals shutdown) and `watch_fd` (another socket whose peer hanging up should abort
// the operation, e.g. the client while we wait on a worker).
struct IoWatch {
    int wake_fd = -1;
    int watch_fd = -1;
    // A second wake source, for work done for several parties at once: a summary's chunk
    // request stops for the server's shutdown (wake_fd) and for its own cancellation.
    int cancel_fd = -1;
};

// Whether read_some() tries the socket before waiting. Waiting first saves a recv() that
// fails with EAGAIN when the data cannot be there yet (a reply to a request just sent, the
// next request right after a response).
enum class ReadStart { try_first, wait_first };

IoStatus read_some(int fd, char* buf, std::size_t cap, std::size_t& n, TimePoint deadline,
                   const IoWatch& watch = {}, ReadStart start = ReadStart::try_first);
IoStatus write_all(int fd, std::string_view data, TimePoint deadline, const IoWatch& watch = {});

// Waits until `deadline` watching `watch` (and `readable`, when given): returns timeout when
// the wait ran its course, ok when `readable` can be read, peer_gone or woken when the watch
// cut it short.
IoStatus wait_watch(const IoWatch& watch, TimePoint deadline, int readable = -1);

// Non-blocking check whether the peer of a connected socket has closed or reset it.
bool peer_closed(int fd);

Fd listen_tcp(const std::string& host, std::uint16_t port, int backlog, std::string& error);
Fd connect_tcp(const std::string& host, std::uint16_t port, TimePoint deadline, std::string& error);
std::uint16_t local_port(int fd);
// Every address `name` resolves to (through the system resolver: /etc/hosts, DNS), sorted
// and without duplicates. Empty with `error` set when the name does not resolve.
std::vector<std::string> resolve_all(const std::string& name, std::string& error);
std::string peer_address(int fd);
// Whether an address as peer_address() writes it is a loopback one: 127.0.0.0/8, ::1, or
// 127.0.0.0/8 mapped into IPv6 (::ffff:127.x.x.x).
bool is_loopback_address(std::string_view address);
// The numeric text of an address (what accept() filled in).
std::string address_text(const sockaddr_storage& addr);

// An unused loopback port, verified free by binding it (the bind is released at once, so
// the caller must still cope with losing a race for it).
std::uint16_t pick_free_port(const std::string& host = "127.0.0.1");

// The process's open-file limit (RLIMIT_NOFILE). raise_fd_limit() lifts the soft limit to the
// hard one, the way servers do at start: a soft limit of 1024 (systemd's and most shells'
// default) runs out before 1024 client connections, each of which may hold an upstream
// connection too. Returns the soft limit before and after.
struct FdLimit {
    std::uint64_t before = 0;
    std::uint64_t after = 0;
};
FdLimit raise_fd_limit();

// An eventfd used to wake every blocked operation at shutdown. Stays readable once set,
// unless its one consumer clears it (a poller woken to look again).
class WakeSignal {
  public:
    WakeSignal();
    void notify();
    void clear();
    bool notified() const;
    int fd() const { return fd_.get(); }

  private:
    Fd fd_;
};

}  // namespace llama_pool
