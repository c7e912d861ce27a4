// Issue 18's measurement: N long streams at a few events a second through a bare HttpServer,
// the body relayed either by a BodyPump (the server's event loop) or by the handler blocking
// on its source (a thread per stream, as the relay does today). Reports what the server side
// costs: threads, resident memory, and CPU per event (the producer's own CPU subtracted).
// The clients run in a forked process, single-threaded on epoll, so their cost is not counted.
// The sources are socketpairs written by this process, standing in for worker connections.
//
//   build/test/pump-bench --mode pump --streams 1000 --rate 5 --seconds 20
//   build/test/pump-bench --mode blocking --streams 1000 --rate 5 --seconds 20
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/http_server.hpp"
#include "test/support/drain_source.hpp"

using namespace llama_pool;

namespace {

struct Options {
    std::string mode = "pump";
    std::size_t streams = 1000;
    double rate = 5;  // events per second per stream
    double seconds = 20;
};

// Reads what the source has and passes it on; the source's end ends the body.
class SourcePump final : public BodyPump {
  public:
    explicit SourcePump(Fd source) : source_(std::move(source)) {}
    int source_fd() const override { return source_.get(); }
    Step pull(std::string& out) override { return test::drain_source(source_.get(), out); }
    TimePoint deadline() const override { return TimePoint::max(); }
    Step on_timeout(std::string&) override { return Step::aborted; }
    void on_client_gone() override {}

  private:
    Fd source_;
};

struct Sources {
    std::mutex mutex;
    std::vector<Fd> writers;
    std::size_t count() {
        std::lock_guard lock(mutex);
        return writers.size();
    }
};

double process_cpu_seconds() {
    rusage u{};
    ::getrusage(RUSAGE_SELF, &u);
    return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
           static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

double thread_cpu_seconds() {
    timespec ts{};
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

// A field of /proc/self/status ("Threads", "VmRSS"), as its first number.
long status_field(const std::string& name) {
    std::ifstream in("/proc/self/status");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind(name + ":", 0) == 0) {
            return std::stol(line.substr(name.size() + 1));
        }
    }
    return -1;
}

// The client side, in its own process: opens every stream, reads until the server closes
// them all, and writes the byte count to `report`.
[[noreturn]] void run_clients(int port_pipe, int report, std::size_t streams) {
    std::uint16_t port = 0;
    if (::read(port_pipe, &port, sizeof port) != sizeof port) {
        ::_exit(2);
    }
    Fd epoll(::epoll_create1(EPOLL_CLOEXEC));
    std::vector<Fd> conns;
    const std::string request = "GET /stream HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
    for (std::size_t i = 0; i < streams; ++i) {
        std::string error;
        auto fd = connect_tcp("127.0.0.1", port, Clock::now() + seconds(10), error);
        if (!fd.valid() ||
            write_all(fd.get(), request, Clock::now() + seconds(10)) != IoStatus::ok) {
            ::_exit(3);
        }
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u64 = i;
        ::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, fd.get(), &ev);
        conns.push_back(std::move(fd));
    }
    std::uint64_t bytes = 0;
    std::size_t open = streams;
    std::vector<epoll_event> events(256);
    char buf[65536];
    while (open > 0) {
        const int n = ::epoll_wait(epoll.get(), events.data(), static_cast<int>(events.size()), -1);
        for (int i = 0; i < n; ++i) {
            auto& fd = conns[events[static_cast<std::size_t>(i)].data.u64];
            const auto got = ::recv(fd.get(), buf, sizeof buf, MSG_DONTWAIT);
            if (got > 0) {
                bytes += static_cast<std::uint64_t>(got);
            } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
                ::epoll_ctl(epoll.get(), EPOLL_CTL_DEL, fd.get(), nullptr);
                fd.reset();
                --open;
            }
        }
    }
    [[maybe_unused]] const auto w = ::write(report, &bytes, sizeof bytes);
    ::_exit(0);
}

HttpHandler make_handler(Sources& sources, bool pump) {
    return [&sources, pump](HttpExchange& ex) {
        int pair[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
            ex.respond(500, Headers{}, "socketpair");
            return;
        }
        Fd source(pair[0]);
        {
            std::lock_guard lock(sources.mutex);
            sources.writers.emplace_back(pair[1]);
        }
        Headers headers;
        headers.add("Content-Type", "text/event-stream");
        if (!ex.begin(200, std::move(headers), std::nullopt)) {
            return;
        }
        if (pump && ex.hand_off(std::make_unique<SourcePump>(std::move(source)))) {
            return;
        }
        // What the relay does today: the thread waits on the source and writes each piece.
        char buf[16384];
        while (true) {
            std::size_t n = 0;
            const auto st = read_some(source.get(), buf, sizeof buf, n,
                                      Clock::now() + seconds(3600), ex.watch());
            if (st != IoStatus::ok || !ex.write({buf, n})) {
                return;
            }
        }
    };
}

int parse(int argc, char** argv, Options& o) {
    if (argc % 2 == 0) {
        return 1;  // options come in pairs (--help included)
    }
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string key = argv[i];
        const std::string value = argv[i + 1];
        if (key == "--mode") {
            o.mode = value;
        } else if (key == "--streams") {
            o.streams = std::stoul(value);
        } else if (key == "--rate") {
            o.rate = std::stod(value);
        } else if (key == "--seconds") {
            o.seconds = std::stod(value);
        } else {
            return 1;
        }
    }
    return o.mode == "pump" || o.mode == "blocking" ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    Options o;
    if (parse(argc, argv, o) != 0) {
        std::cerr << "usage: pump-bench [--mode pump|blocking] [--streams N] [--rate EVENTS_PER_S]"
                     " [--seconds S]\n";
        return 2;
    }
    raise_fd_limit();
    int port_pipe[2];
    int report_pipe[2];
    if (::pipe(port_pipe) != 0 || ::pipe(report_pipe) != 0) {
        return 1;
    }
    // Forked before any thread starts.
    const pid_t child = ::fork();
    if (child == 0) {
        run_clients(port_pipe[0], report_pipe[1], o.streams);
    }
    Sources sources;
    HttpServerOptions so;
    so.port = 0;
    so.max_connections = o.streams + 64;
    HttpServer server(so, make_handler(sources, o.mode == "pump"));
    std::string error;
    if (!server.start(error)) {
        std::cerr << error << "\n";
        return 1;
    }
    const std::uint16_t port = server.port();
    [[maybe_unused]] const auto w = ::write(port_pipe[1], &port, sizeof port);
    while (sources.count() < o.streams) {
        std::this_thread::sleep_for(milliseconds(10));
    }
    const std::string event =
        "data: {\"choices\":[{\"delta\":{\"content\":\" token\"},\"index\":0}],"
        "\"object\":\"chat.completion.chunk\"}\n\n";
    // Writes paced evenly over each tick, the way independent streams arrive.
    const auto tick =
        std::chrono::duration_cast<Duration>(std::chrono::duration<double>(1 / o.rate));
    const auto warmup = seconds(2);
    const auto start = Clock::now();
    double cpu0 = 0;
    double producer0 = 0;
    std::uint64_t events = 0;
    bool measuring = false;
    std::size_t peak_threads = 0;
    for (auto at = start; at < start + warmup + from_seconds(o.seconds); at += tick) {
        peak_threads = std::max(peak_threads, server.thread_count());
        if (!measuring && at >= start + warmup) {
            measuring = true;
            cpu0 = process_cpu_seconds();
            producer0 = thread_cpu_seconds();
        }
        constexpr std::size_t kBatch = 50;
        for (std::size_t i = 0; i < o.streams; i += kBatch) {
            std::this_thread::sleep_until(at + tick * i / o.streams);
            std::lock_guard lock(sources.mutex);
            for (std::size_t j = i; j < std::min(i + kBatch, o.streams); ++j) {
                write_all(sources.writers[j].get(), event, Clock::now() + seconds(5));
                events += measuring ? 1 : 0;
            }
        }
    }
    const double cpu = process_cpu_seconds() - cpu0;
    const double producer = thread_cpu_seconds() - producer0;
    const long threads = status_field("Threads");
    const long rss_kb = status_field("VmRSS");
    const auto server_threads = server.thread_count();
    {
        std::lock_guard lock(sources.mutex);
        sources.writers.clear();  // every body ends
    }
    std::uint64_t client_bytes = 0;
    [[maybe_unused]] const auto r = ::read(report_pipe[0], &client_bytes, sizeof client_bytes);
    int status = 0;
    ::waitpid(child, &status, 0);
    server.stop();
    fmt::print(
        "mode={} streams={} rate={} seconds={} events={} process_threads={} server_threads={} "
        "server_threads_peak={} "
        "rss_mb={:.1f} server_cpu_s={:.2f} producer_cpu_s={:.2f} cpu_us_per_event={:.1f} "
        "client_bytes={}\n",
        o.mode, o.streams, o.rate, o.seconds, events, threads, server_threads, peak_threads,
        static_cast<double>(rss_kb) / 1024, cpu - producer, producer,
        events ? (cpu - producer) * 1e6 / static_cast<double>(events) : 0.0, client_bytes);
    return 0;
}
