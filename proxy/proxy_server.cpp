#include "proxy/proxy_server.hpp"

#include <fmt/format.h>

#include "common/error_body.hpp"
#include "proxy/request_id.hpp"

namespace llama_pool {

namespace {

milliseconds to_ms(double seconds) {
    return milliseconds(static_cast<long long>(seconds * 1000));
}

}  // namespace

ProxyServer::ProxyServer(const PoolConfig& config, BackendRegistry& registry,
                         Supervisor* supervisor, Logger& log, RandomSource& random,
                         std::string version, std::vector<std::string> client_keys)
    : config_(config),
      registry_(registry),
      log_(log),
      routes_(registry, supervisor, std::move(version), config.admin_key),
      relay_(config, registry, log, random),
      auth_(std::move(client_keys)) {
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
    server_ = std::make_unique<HttpServer>(options, [this](HttpExchange& ex) { handle(ex); });
}

ProxyServer::~ProxyServer() {
    server_->stop();
}

bool ProxyServer::start(std::string& error) {
    return server_->start(error);
}

void ProxyServer::shutdown(TimePoint deadline) {
    server_->stop_accepting();
    server_->drain(deadline);
    registry_.shutdown();
    server_->stop();
}

void ProxyServer::handle(HttpExchange& exchange) {
    const auto started = Clock::now();
    auto& request = exchange.request();
    const auto request_id = request_id_for(request.headers.get("X-Request-Id"));
    std::string target;
    if (!normalize_target(request.target, target)) {
        respond_json(exchange, 400, make_error_body(400, "request target must be a path"),
                     request_id);
        return;
    }
    const std::string path(target.substr(0, target.find('?')));
    // /health stays public (orchestrators probe it); /pool/* checks the admin key itself.
    const bool pool_admin = path == "/pool" || path.rfind("/pool/", 0) == 0;
    if (path != "/health" && !pool_admin) {
        std::optional<std::string> key;
        if (auth_.required()) {
            key = auth_.check(request.headers);
            if (!key) {
                respond_json(exchange, 401, make_error_body(401, "Invalid API Key"), request_id);
                log_.info("proxy", "request",
                          {{"request_id", request_id},
                           {"route", path},
                           {"status", 401},
                           {"rejected", "auth"}});
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
                log_.info("proxy", "request",
                          {{"request_id", request_id},
                           {"route", path},
                           {"status", 429},
                           {"rejected", "rate_limit"}});
                return;
            }
        }
    }
    if (routes_.handle(exchange, path, request_id)) {
        log_.debug("proxy", "request",
                   {{"request_id", request_id}, {"method", request.method}, {"route", path}});
        return;
    }
    const auto outcome = relay_.forward(exchange, target, request_id);
    log_.info("proxy", "request",
              {{"request_id", request_id},
               {"method", request.method},
               {"route", path},
               {"status", outcome.status},
               {"worker", outcome.worker},
               {"attempts", outcome.attempts},
               {"queue_ms", static_cast<long long>(outcome.queue_seconds * 1000)},
               {"duration_ms", to_millis(Clock::now() - started)},
               {"client_gone", outcome.client_gone},
               {"upstream_broke", outcome.upstream_broke},
               {"rejected", outcome.rejected},
               {"retries", outcome.retry_reasons}});
}

}  // namespace llama_pool
