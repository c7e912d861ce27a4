#include "common/process_metrics.hpp"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <charconv>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <optional>
#include <sstream>
#include <string_view>
#include <vector>

#include "common/metrics.hpp"

namespace llama_pool {

namespace {

// /proc files report a size of 0, so they are read to their end rather than by size.
std::optional<std::string> read_whole_file(const char* path) {
    std::ifstream in(path);
    if (!in) {
        return std::nullopt;
    }
    std::ostringstream buffer;
    buffer << in.rdbuf();
    if (in.bad()) {
        return std::nullopt;
    }
    return std::move(buffer).str();
}

std::optional<std::uint64_t> to_u64(std::string_view s) {
    std::uint64_t v = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (s.empty() || ec != std::errc() || end != s.data() + s.size()) {
        return std::nullopt;
    }
    return v;
}

std::vector<std::string_view> split_spaces(std::string_view s) {
    std::vector<std::string_view> fields;
    while (!s.empty()) {
        const auto start = s.find_first_not_of(" \n");
        if (start == std::string_view::npos) {
            break;
        }
        s.remove_prefix(start);
        const auto end = s.find_first_of(" \n");
        fields.push_back(s.substr(0, end));
        s.remove_prefix(end == std::string_view::npos ? s.size() : end);
    }
    return fields;
}

struct ProcStat {
    std::uint64_t utime_ticks = 0;
    std::uint64_t stime_ticks = 0;
    std::uint64_t threads = 0;
    std::uint64_t start_ticks = 0;  // after boot
    std::uint64_t vsize_bytes = 0;
    std::uint64_t rss_pages = 0;
};

// proc(5): the command name (field 2) is in parentheses and may itself contain spaces and
// parentheses, so the fields are counted from the last ')'.
std::optional<ProcStat> parse_proc_stat(std::string_view text) {
    const auto close = text.rfind(')');
    if (close == std::string_view::npos) {
        return std::nullopt;
    }
    const auto fields = split_spaces(text.substr(close + 1));
    // fields[0] is field 3 (state); field N is fields[N - 3].
    const auto field = [&](std::size_t n) -> std::optional<std::uint64_t> {
        return n - 3 < fields.size() ? to_u64(fields[n - 3]) : std::nullopt;
    };
    const auto utime = field(14), stime = field(15), threads = field(20), start = field(22),
               vsize = field(23), rss = field(24);
    if (!utime || !stime || !threads || !start || !vsize || !rss) {
        return std::nullopt;
    }
    return ProcStat{*utime, *stime, *threads, *start, *vsize, *rss};
}

std::optional<std::uint64_t> boot_time_seconds() {
    const auto text = read_whole_file("/proc/stat");
    if (!text) {
        return std::nullopt;
    }
    std::string_view rest = *text;
    while (!rest.empty()) {
        const auto eol = rest.find('\n');
        const auto line = rest.substr(0, eol);
        rest.remove_prefix(eol == std::string_view::npos ? rest.size() : eol + 1);
        if (line.substr(0, 6) == "btime ") {
            const auto fields = split_spaces(line);
            return fields.size() == 2 ? to_u64(fields[1]) : std::nullopt;
        }
    }
    return std::nullopt;
}

std::optional<std::uint64_t> open_fd_count() {
    DIR* dir = opendir("/proc/self/fd");
    if (dir == nullptr) {
        return std::nullopt;
    }
    std::uint64_t count = 0;
    while (const dirent* entry = readdir(dir)) {
        if (entry->d_name[0] != '.') {
            ++count;
        }
    }
    closedir(dir);
    // The directory stream's own descriptor was open while counting.
    return count > 0 ? count - 1 : 0;
}

void append_metric(std::vector<prometheus::MetricFamily>& out, std::string name, std::string help,
                   CollectedFamily::Type type, double value) {
    out.push_back(CollectedFamily(std::move(name), std::move(help), type).add({}, value).take());
}

}  // namespace

std::vector<prometheus::MetricFamily> collect_process_metrics() {
    std::vector<prometheus::MetricFamily> out;
    const long ticks_per_second = sysconf(_SC_CLK_TCK);
    const long page_size = sysconf(_SC_PAGESIZE);
    const auto stat_text = read_whole_file("/proc/self/stat");
    const auto stat = stat_text ? parse_proc_stat(*stat_text) : std::nullopt;

    if (stat && ticks_per_second > 0) {
        append_metric(out, "process_cpu_seconds_total",
                      "Total user and system CPU time spent in seconds.",
                      CollectedFamily::Type::counter,
                      static_cast<double>(stat->utime_ticks + stat->stime_ticks) /
                          static_cast<double>(ticks_per_second));
    }
    if (stat && page_size > 0) {
        append_metric(out, "process_resident_memory_bytes", "Resident memory size in bytes.",
                      CollectedFamily::Type::gauge,
                      static_cast<double>(stat->rss_pages) * static_cast<double>(page_size));
    }
    if (stat) {
        append_metric(out, "process_virtual_memory_bytes", "Virtual memory size in bytes.",
                      CollectedFamily::Type::gauge, static_cast<double>(stat->vsize_bytes));
    }
    if (const auto fds = open_fd_count()) {
        append_metric(out, "process_open_fds", "Number of open file descriptors.",
                      CollectedFamily::Type::gauge, static_cast<double>(*fds));
    }
    rlimit limit{};
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0) {
        append_metric(
            out, "process_max_fds", "Maximum number of open file descriptors.",
            CollectedFamily::Type::gauge,
            limit.rlim_cur == RLIM_INFINITY ? HUGE_VAL : static_cast<double>(limit.rlim_cur));
    }
    const auto boot = boot_time_seconds();
    if (stat && boot && ticks_per_second > 0) {
        append_metric(out, "process_start_time_seconds",
                      "Start time of the process since unix epoch in seconds.",
                      CollectedFamily::Type::gauge,
                      static_cast<double>(*boot) + static_cast<double>(stat->start_ticks) /
                                                       static_cast<double>(ticks_per_second));
    }
    if (stat) {
        append_metric(out, "process_threads", "Number of OS threads in the process.",
                      CollectedFamily::Type::gauge, static_cast<double>(stat->threads));
    }
    return out;
}

}  // namespace llama_pool
