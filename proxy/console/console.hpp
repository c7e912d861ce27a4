#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "common/clock.hpp"
#include "proxy/console/console_sampler.hpp"
#include "proxy/route_handler.hpp"

namespace llama_pool {

// The operator console: GET / (a page whose HTML, CSS and script are built into the binary,
// with the status table inside for readers without scripts), its assets under /console/,
// and two admin routes the page reads: GET /pool/events (server-sent events: the charts'
// history once, then every tick the newest chart points and /pool/status) and GET
// /pool/series (the charts' history as JSON). The admin routes are reached only through
// PoolRoutes, after its admin check, so they follow /pool/*'s rules exactly.
//
// Lifecycle: start() once (the ticker thread), stop() before the HTTP server drains or
// stops: it ends the ticker and every open event stream, which would otherwise hold a
// server thread until the client leaves.
class Console final : public RouteHandler {
  public:
    using StatusFn = std::function<nlohmann::json()>;

    // `status`: what /pool/status answers; `queue_depth`: requests waiting over all groups.
    Console(const TimeSource& time, StatusFn status, std::function<double()> queue_depth,
            std::string version, Duration period = seconds(1));
    ~Console() override;
    Console(const Console&) = delete;
    Console& operator=(const Console&) = delete;

    void start();
    void stop();

    // A finished client request (see ConsoleSampler::request_done).
    void request_done(std::string_view route, double seconds, long long tokens_predicted) {
        sampler_.request_done(route, seconds, tokens_predicted);
    }
    // One period: a point on every chart and one event frame to every stream. The ticker
    // calls it; tests call it directly on a fake clock.
    void tick();

    // GET / and /console/*; true when answered. Public like today's page was.
    bool handle_page(Exchange& exchange, const std::string& path, const std::string& request_id);
    // GET /pool/events and /pool/series; PoolRoutes calls it after the admin check.
    bool handle(Exchange& exchange, const std::string& path,
                const std::string& request_id) override;

    std::size_t open_streams() const;

  private:
    void events(Exchange& exchange, const std::string& request_id);
    void run_ticker();

    ConsoleSampler sampler_;
    StatusFn status_;
    std::string version_;
    Duration period_;

    mutable std::mutex mutex_;
    std::condition_variable cv_;  // a new frame, or stopping
    // Guarded by mutex_:
    std::string frame_;             // the newest tick's events, as sent
    std::uint64_t generation_ = 0;  // ticks so far; a stream sends each frame once
    std::size_t streams_ = 0;
    bool stopping_ = false;
    std::thread ticker_;  // joined by stop()
};

// The HTML of the status table (today's page), from a /pool/status document. Pure.
std::string status_table_html(const nlohmann::json& status);
// The console page: the built-in index.html with the version and that table in place. Pure.
std::string console_page_html(const nlohmann::json& status, std::string_view version);
// The policy every console response carries: only this origin's own scripts, styles and
// connections; no inline script, no frames, no plugins.
std::string_view console_csp();

}  // namespace llama_pool
