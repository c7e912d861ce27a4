#include "proxy/console/console.hpp"

#include "common/error_body.hpp"
#include "proxy/console/console_assets.hpp"

namespace llama_pool {

namespace {

constexpr auto kHeartbeat = seconds(15);  // a comment line on a quiet stream finds gone clients

std::string sse_event(std::string_view name, const nlohmann::json& data) {
    std::string out = "event: ";
    out += name;
    out += "\ndata: ";
    out += data.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    out += "\n\n";
    return out;
}

Headers page_headers(std::string_view content_type, const std::string& request_id) {
    Headers headers;
    headers.add("Content-Type", std::string(content_type));
    headers.add("Content-Security-Policy", std::string(console_csp()));
    headers.add("X-Content-Type-Options", "nosniff");
    headers.add("Referrer-Policy", "no-referrer");
    headers.add("Cache-Control", "no-cache");
    headers.add("X-Request-Id", request_id);
    return headers;
}

}  // namespace

Console::Console(const TimeSource& time, StatusFn status, std::function<double()> queue_depth,
                 std::string version, Duration period)
    : sampler_(time, std::move(queue_depth)),
      status_(std::move(status)),
      version_(std::move(version)),
      period_(period) {}

Console::~Console() {
    stop();
}

void Console::start() {
    std::lock_guard lock(mutex_);
    if (!ticker_.joinable() && !stopping_) {
        ticker_ = std::thread([this] { run_ticker(); });
    }
}

void Console::stop() {
    std::thread ticker;
    {
        std::lock_guard lock(mutex_);
        stopping_ = true;
        ticker = std::move(ticker_);
    }
    cv_.notify_all();
    if (ticker.joinable()) {
        ticker.join();
    }
}

void Console::run_ticker() {
    std::unique_lock lock(mutex_);
    while (!stopping_) {
        // Real waiting is the ticker's only job; what a tick computes reads the injected clock.
        if (cv_.wait_for(lock, period_, [this] { return stopping_; })) {
            break;
        }
        lock.unlock();
        tick();
        lock.lock();
    }
}

void Console::tick() {
    sampler_.tick();
    // Built once per tick, whatever the number of open consoles.
    auto frame = sse_event("sample", sampler_.latest_json()) + sse_event("status", status_());
    {
        std::lock_guard lock(mutex_);
        frame_ = std::move(frame);
        ++generation_;
    }
    cv_.notify_all();
}

std::size_t Console::open_streams() const {
    std::lock_guard lock(mutex_);
    return streams_;
}

bool Console::handle_page(Exchange& exchange, const std::string& path,
                          const std::string& request_id) {
    const auto& method = exchange.request().method;
    if (method != "GET" && method != "HEAD") {
        return false;
    }
    if (path == "/") {
        exchange.respond(200, page_headers("text/html; charset=utf-8", request_id),
                         console_page_html(status_(), version_));
        return true;
    }
    constexpr std::string_view prefix = "/console/";
    if (path.rfind(prefix, 0) != 0) {
        return false;
    }
    const auto asset = find_console_asset(std::string_view(path).substr(prefix.size()));
    if (!asset || asset->name == "index.html") {
        Headers headers = page_headers("application/json; charset=utf-8", request_id);
        exchange.respond(404, std::move(headers),
                         make_error_body(404, "File Not Found", "not_found_error"));
        return true;
    }
    exchange.respond(200, page_headers(asset->content_type, request_id), asset->body);
    return true;
}

bool Console::handle(Exchange& exchange, const std::string& path, const std::string& request_id) {
    if (exchange.request().method != "GET") {
        return false;
    }
    if (path == "/pool/events") {
        events(exchange, request_id);
        return true;
    }
    if (path == "/pool/series") {
        Headers headers;
        headers.add("Content-Type", "application/json; charset=utf-8");
        headers.add("X-Request-Id", request_id);
        exchange.respond(200, std::move(headers), sampler_.history_json().dump());
        return true;
    }
    return false;
}

void Console::events(Exchange& exchange, const std::string& request_id) {
    Headers headers;
    headers.add("Content-Type", "text/event-stream");
    headers.add("Cache-Control", "no-store");
    headers.add("X-Request-Id", request_id);
    std::uint64_t seen = 0;
    {
        std::lock_guard lock(mutex_);
        if (stopping_) {
            exchange.respond(503, std::move(headers),
                             make_error_body(503, "the pool is shutting down"));
            return;
        }
        ++streams_;
        seen = generation_;
    }
    struct Leave {
        Console& c;
        ~Leave() {
            std::lock_guard lock(c.mutex_);
            --c.streams_;
        }
    } leave{*this};
    // What a page needs at once: the charts so far and the pool as it is now.
    if (!exchange.begin(200, std::move(headers), std::nullopt) ||
        !exchange.write("retry: 2000\n\n" + sse_event("history", sampler_.history_json()) +
                        sse_event("status", status_()))) {
        return;
    }
    std::unique_lock lock(mutex_);
    while (true) {
        const bool woke =
            cv_.wait_for(lock, kHeartbeat, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) {
            break;
        }
        std::string out = woke ? frame_ : std::string(": heartbeat\n\n");
        seen = generation_;
        lock.unlock();
        if (exchange.client_gone() || !exchange.write(out)) {
            exchange.abort();
            return;
        }
        lock.lock();
    }
    lock.unlock();
    exchange.finish();
}

}  // namespace llama_pool
