#include "proxy/proxy_server.hpp"

#include <fmt/format.h>

#include "common/credentials.hpp"
#include "common/error_body.hpp"

namespace llama_pool {

namespace {

milliseconds to_ms(double seconds) {
    return milliseconds(static_cast<long long>(seconds * 1000));
}

// Requests the pool answers as their final recipient instead of relaying: an OPTIONS about the
// server itself ("*", RFC 9110 §9.3.7) or one that may go no further (Max-Forwards: 0, which
// an intermediary must not forward, §7.6.2), and TRACE, which would echo the client's
// credentials back (§9.3.8); llama-server implements no TRACE either. 0: relay it.
int final_recipient_status(const HttpRequest& request) {
    if (request.method == "TRACE") {
        return 501;
    }
    if (request.method == "OPTIONS" &&
        (request.target == "*" || max_forwards(request.headers) == 0u)) {
        return 200;
    }
    return 0;
}

}  // namespace

ProxyServer::ProxyServer(const PoolConfig& config, GroupSet& groups, Logger& log,
                         PoolMetrics& metrics, std::vector<std::string> client_keys)
    : config_(config),
      groups_(groups),
      log_(log),
      metrics_(metrics),
      routes_(groups, LLAMA_POOL_VERSION, config.admin_key),
      reuse_(config, log, metrics, time_),
      fanout_(log),
      auth_(std::move(client_keys)) {
    metrics.attach_reuse([this] { return reuse_.snapshot(); });
    console_ = std::make_unique<Console>(
        time_, [this] { return routes_.status_json(); },
        [this] {
            double waiting = 0;
            for (const auto& g : groups_.groups()) {
                waiting += static_cast<double>(g->registry().waiting());
            }
            return waiting;
        },
        LLAMA_POOL_VERSION);
    routes_.set_admin_routes(console_.get());
    if (config.rate_limit_rps > 0) {
        rate_limiter_ =
            std::make_unique<KeyedRateLimiter>(config.rate_limit_rps, config.rate_limit_burst);
    }
    HttpServerOptions options;
    options.host = config.host;
    options.port = static_cast<std::uint16_t>(config.port);
    options.max_body_bytes = static_cast<std::size_t>(config.max_body_bytes);
    options.head_limits.max_head_bytes = static_cast<std::size_t>(config.max_header_bytes);
    options.head_limits.max_line_bytes = static_cast<std::size_t>(config.max_header_bytes);
    options.head_timeout = to_ms(config.head_timeout);
    options.body_timeout = to_ms(config.body_timeout);
    options.keep_alive_timeout = to_ms(config.keep_alive_timeout);
    options.max_connections = static_cast<std::size_t>(config.max_connections);
    server_ = std::make_unique<HttpServer>(options, [this](Exchange& ex) { handle(ex); });
}

ProxyServer::~ProxyServer() {
    console_->stop();
    server_->stop();
    metrics_.attach_reuse({});
}

bool ProxyServer::start(std::string& error) {
    if (!server_->start(error)) {
        return false;
    }
    console_->start();
    return true;
}

std::size_t ProxyServer::shutdown(TimePoint deadline) {
    server_->stop_accepting();
    console_->stop();  // open event streams end now instead of holding the drain
    server_->drain(deadline);
    const auto cut = server_->active_requests();
    groups_.shutdown_registries();
    server_->stop();
    return cut;
}

void ProxyServer::handle(Exchange& exchange) {
    const auto started = Clock::now();
    auto& request = exchange.request();
    const auto request_id = request_ids_.for_request(request.headers.get("X-Request-Id"));
    std::string target;
    RelayOutcome outcome;
    std::string path = "invalid";
    if (const int status = final_recipient_status(request); status != 0) {
        if (status == 200) {
            Headers headers;
            headers.add("Allow", "GET, HEAD, POST, OPTIONS");
            headers.add("X-Request-Id", request_id);
            exchange.respond(200, std::move(headers), "");
        } else {
            respond_json(exchange, status, make_error_body(status, "TRACE is not supported"),
                         request_id);
        }
        outcome.status = status;
    } else if (!normalize_target(request.target, target)) {
        respond_json(exchange, 400,
                     make_error_body(400,
                                     "request target must be a path, with no encoded "
                                     "control character"),
                     request_id);
        outcome.status = 400;
    } else {
        path = target.substr(0, target.find('?'));
        auto record_later = std::make_shared<RequestRecord>(
            RequestRecord{path, request.method, request_id, started});
        const OutcomeSink sink = [this, record_later](const RelayOutcome& final_outcome) {
            record(*record_later, final_outcome);
        };
        serve(exchange, path, target, request_id, outcome, sink);
        if (outcome.handed_off) {
            return;  // the sink records it when its body ends
        }
    }
    record({path, request.method, request_id, started}, outcome);
}

void ProxyServer::record(const RequestRecord& request, const RelayOutcome& outcome) {
    const auto& path = request.path;
    const auto& request_id = request.request_id;
    const auto seconds = to_seconds(Clock::now() - request.started);
    const auto route = route_label(path);
    // A client that left got no status; 499 is the conventional label for that.
    const int status = outcome.client_gone ? 499 : outcome.status;
    metrics_.request_done(outcome.group, route, status, seconds);
    console_->request_done(route, seconds, outcome.tokens_predicted);
    if (outcome.first_byte_seconds >= 0) {
        metrics_.first_byte(outcome.group, route, outcome.first_byte_seconds);
    }
    if (outcome.client_gone) {
        metrics_.client_disconnect();
    }
    if (outcome.rejected != RejectReason::none) {
        metrics_.rejected(to_string(outcome.rejected));
    }
    // Probes and scrapes would drown the access log; they are logged at debug.
    const bool quiet = route == "/health" || route == "/metrics";
    const auto level = quiet ? LogLevel::debug : LogLevel::info;
    if (!log_.enabled(level)) {
        return;  // the fields cost thousands of instructions per request to build (callgrind)
    }
    std::vector<std::string> retries;
    for (const auto reason : outcome.retry_reasons) {
        retries.emplace_back(to_string(reason));
    }
    log_.log(level, "proxy", "request",
             {{"request_id", request_id},
              {"method", request.method},
              {"route", route},
              {"group", outcome.group},
              {"tenant", outcome.tenant},
              {"status", status},
              {"worker", outcome.worker},
              {"attempts", outcome.attempts},
              {"queue_ms", static_cast<long long>(outcome.queue_seconds * 1000)},
              {"duration_ms", static_cast<long long>(seconds * 1000)},
              {"client_gone", outcome.client_gone},
              {"upstream_broke", outcome.upstream_broke},
              {"rejected", to_string(outcome.rejected)},
              {"cache", outcome.cache},
              {"idempotency", outcome.idempotency},
              {"retries", retries}});
}

void ProxyServer::serve(Exchange& exchange, const std::string& path, const std::string& target,
                        const std::string& request_id, RelayOutcome& outcome,
                        const OutcomeSink& sink) {
    const auto& request = exchange.request();
    if (path == "/metrics") {
        // Its own key when one is set; a scraper should not need a client key.
        if (!config_.metrics_key.empty()) {
            const auto key = presented_key(request.headers);
            if (!key || !constant_time_equals(*key, config_.metrics_key)) {
                respond_json(exchange, 401, make_error_body(401, "Invalid API Key"), request_id);
                outcome.status = 401;
                outcome.rejected = RejectReason::auth;
                return;
            }
        }
        Headers headers;
        headers.add("Content-Type", "text/plain; version=0.0.4; charset=utf-8");
        const auto model = requested_model({}, request.query());
        exchange.respond(200, std::move(headers),
                         model.empty() || groups_.implicit()
                             ? metrics_.render()
                             : metrics_.render_group(groups_.route(request, path).metrics_label()));
        outcome.status = 200;
        return;
    }
    // The console's page and files are public, as the status page at / always was: a browser
    // cannot send a key with a navigation. Its data comes from /pool/*, with the admin rules.
    if (console_->handle_page(exchange, path, request_id)) {
        outcome.status = exchange.response_status();
        return;
    }
    // /health stays public (orchestrators probe it); /pool/* checks the admin key itself.
    const bool pool_admin = path == "/pool" || path.rfind("/pool/", 0) == 0;
    if (path != "/health" && !pool_admin) {
        std::optional<std::string> key;
        if (auth_.required()) {
            key = auth_.check(request.headers);
            if (!key) {
                respond_json(exchange, 401, make_error_body(401, "Invalid API Key"), request_id);
                outcome.status = 401;
                outcome.rejected = RejectReason::auth;
                return;
            }
        }
        if (rate_limiter_) {
            const auto decision = rate_limiter_->check(
                key ? "key:" + *key : "addr:" + exchange.remote_address(), Clock::now());
            if (!decision.allowed) {
                const auto retry_after =
                    std::max<long long>(1, (to_millis(decision.retry_after) + 999) / 1000);
                Headers headers;
                headers.add("Content-Type", "application/json; charset=utf-8");
                headers.add("X-Request-Id", request_id);
                headers.add("Retry-After", std::to_string(retry_after));
                exchange.respond(429, std::move(headers),
                                 make_error_body(429, "rate limit exceeded, retry later"));
                outcome.status = 429;
                outcome.rejected = RejectReason::rate_limit;
                return;
            }
        }
    }
    if (routes_.handle(exchange, path, request_id) ||
        (workload_routes_ && workload_routes_->handle(exchange, path, request_id))) {
        outcome.status = exchange.response_status();
        return;
    }
    auto& group = groups_.route(request, path);
    // A list of embeddings inputs is spread over the group's workers (each slice relayed);
    // anything else, and a list that fits one worker, goes through as it came.
    if (fanout_.serve(exchange, group, path, target, request_id, outcome)) {
        outcome.group = group.metrics_label();
        return;
    }
    outcome = reuse_.forward(exchange, target, request_id, group.relay(), sink);
    outcome.group = group.metrics_label();
}

}  // namespace llama_pool
