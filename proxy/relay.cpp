#include "proxy/relay.hpp"

#include <fmt/format.h>

#include <thread>

#include "common/backoff.hpp"
#include "common/error_body.hpp"
#include "common/http_client.hpp"

namespace llama_pool {

namespace {

constexpr const char* kComponent = "proxy";
constexpr int kMaxAttempts = 3;

bool retryable_status(int status) {
    return status == 502 || status == 503 || status == 504;
}

void respond_error(HttpExchange& exchange, int status, std::string_view message,
                   const std::string& request_id, std::optional<int> retry_after = {}) {
    Headers headers;
    headers.add("Content-Type", "application/json; charset=utf-8");
    headers.add("X-Request-Id", request_id);
    if (retry_after) {
        headers.add("Retry-After", std::to_string(*retry_after));
    }
    exchange.respond(status, std::move(headers), make_error_body(status, message));
}

}  // namespace

Headers upstream_request_headers(const HttpRequest& request, const std::string& request_id,
                                 const std::string& worker_key, const std::string& client_addr) {
    Headers out;
    std::string forwarded_for;
    for (const auto& [name, value] : request.headers.fields()) {
        if (is_hop_by_hop(name, request.headers) || iequals(name, "Host") ||
            iequals(name, "Content-Length") || iequals(name, "Expect") ||
            iequals(name, "X-Request-Id")) {
            continue;
        }
        if (iequals(name, "X-Forwarded-For")) {
            forwarded_for = value;
            continue;
        }
        // The client's credentials were for the pool; the worker gets the pool's own key.
        if (!worker_key.empty() && (iequals(name, "Authorization") || iequals(name, "X-Api-Key"))) {
            continue;
        }
        out.add(name, value);
    }
    if (!worker_key.empty()) {
        out.add("Authorization", "Bearer " + worker_key);
    }
    out.add("X-Request-Id", request_id);
    out.add("X-Forwarded-For",
            forwarded_for.empty() ? client_addr : forwarded_for + ", " + client_addr);
    return out;
}

Headers client_response_headers(const Headers& upstream, const std::string& request_id) {
    Headers out;
    for (const auto& [name, value] : upstream.fields()) {
        if (is_hop_by_hop(name, upstream) || iequals(name, "Content-Length") ||
            iequals(name, "X-Request-Id")) {
            continue;
        }
        out.add(name, value);
    }
    out.add("X-Request-Id", request_id);
    return out;
}

RelayOutcome Relay::forward(HttpExchange& exchange, const std::string& target,
                            const std::string& request_id) {
    const auto& request = exchange.request();
    RelayOutcome outcome;
    const auto started = Clock::now();
    const auto total_deadline = started + from_seconds(config_.total_timeout);
    const auto queue_deadline = started + from_seconds(config_.queue_timeout);
    const ExponentialBackoff backoff(milliseconds(50), seconds(2));
    std::set<std::string> tried;
    std::string last_error = "no worker available";
    int last_status = 503;

    while (outcome.attempts < kMaxAttempts) {
        const auto queued_at = Clock::now();
        auto acquired = registry_.acquire(std::min(queue_deadline, total_deadline), tried,
                                          [&] { return exchange.client_gone(); });
        outcome.queue_seconds += to_seconds(Clock::now() - queued_at);
        if (acquired.status == BackendRegistry::AcquireStatus::cancelled) {
            outcome.client_gone = true;
            exchange.abort();
            return outcome;
        }
        if (!acquired.lease) {
            break;
        }
        ++outcome.attempts;
        Backend& backend = acquired.lease->backend();
        outcome.worker = backend.id;
        tried.insert(backend.id);

        const auto headers = upstream_request_headers(request, request_id, backend.api_key,
                                                      exchange.remote_address());
        const auto host_header = fmt::format("{}:{}", backend.pool.host(), backend.pool.port());
        HttpClientConnection conn;
        HttpResponseHead head;
        IoStatus io = IoStatus::ok;
        std::string error;
        // A pooled connection may have been closed by the worker's keep-alive timer just as
        // we sent on it; that costs nothing to retry on a fresh connection, once.
        for (int fresh_try = 0; fresh_try < 2; ++fresh_try) {
            bool reused = false;
            conn = backend.pool.take(Clock::now() + from_seconds(config_.connect_timeout), reused,
                                     error);
            if (!conn.connected()) {
                io = IoStatus::error;
                error = "connect: " + error;
                break;
            }
            const auto head_deadline =
                std::min(total_deadline, Clock::now() + from_seconds(config_.response_timeout));
            io = conn.send_request(request.method, target, host_header, headers, request.body,
                                   head_deadline, exchange.watch());
            if (io == IoStatus::ok) {
                io = conn.read_head(head, request.method == "HEAD", head_deadline, error,
                                    exchange.watch());
            }
            if (!(reused && (io == IoStatus::eof || io == IoStatus::error) &&
                  error != "incomplete response head")) {
                break;
            }
        }
        if (io == IoStatus::peer_gone || io == IoStatus::woken) {
            // Closing the worker connection (conn goes out of scope) cancels the generation.
            outcome.client_gone = io == IoStatus::peer_gone;
            exchange.abort();
            return outcome;
        }
        if (io != IoStatus::ok) {
            last_error = fmt::format("worker {}: {} ({})", backend.id,
                                     error.empty() ? to_string(io) : error, to_string(io));
            last_status = io == IoStatus::timeout ? 504 : 502;
            log_.warn(kComponent, "upstream_failed",
                      {{"request_id", request_id},
                       {"worker", backend.id},
                       {"attempt", outcome.attempts},
                       {"error", last_error}});
        } else if (retryable_status(head.status) && outcome.attempts < kMaxAttempts) {
            // Drain the small error body so the connection can be reused, then try another.
            std::string discard;
            bool done = false;
            const auto drain_deadline = Clock::now() + seconds(2);
            while (!done && discard.size() < 64 * 1024 &&
                   conn.read_body(discard, done, drain_deadline, error) == IoStatus::ok) {
            }
            if (done) {
                backend.pool.give_back(std::move(conn));
            }
            last_error = fmt::format("worker {} answered {}", backend.id, head.status);
            last_status = head.status;
            log_.warn(kComponent, "upstream_retryable_status",
                      {{"request_id", request_id},
                       {"worker", backend.id},
                       {"attempt", outcome.attempts},
                       {"status", head.status}});
        } else {
            // Commit: from here on the client sees this worker's response, and no retry.
            outcome.status = head.status;
            const auto framing = response_framing(head, request.method == "HEAD");
            std::optional<std::size_t> length;
            if (framing.framing.kind == BodyFraming::Kind::length ||
                framing.framing.kind == BodyFraming::Kind::none) {
                length = framing.framing.length;
            }
            if (!exchange.begin(head.status, client_response_headers(head.headers, request_id),
                                length)) {
                outcome.client_gone = true;
                return outcome;
            }
            std::string piece;
            bool done = false;
            while (!done) {
                piece.clear();
                const auto idle_deadline = std::min(
                    total_deadline, Clock::now() + from_seconds(config_.stream_idle_timeout));
                io = conn.read_body(piece, done, idle_deadline, error, exchange.watch());
                if (io != IoStatus::ok) {
                    break;
                }
                if (!piece.empty() && !exchange.write(piece)) {
                    outcome.client_gone = true;
                    exchange.abort();
                    return outcome;
                }
            }
            if (io == IoStatus::peer_gone) {
                outcome.client_gone = true;
                exchange.abort();
                return outcome;
            }
            if (io != IoStatus::ok) {
                // The worker broke mid-response. A chunked body can still end cleanly with
                // what was produced; a fixed-length one can only be cut.
                outcome.upstream_broke = true;
                log_.warn(kComponent, "upstream_broke_mid_response",
                          {{"request_id", request_id},
                           {"worker", backend.id},
                           {"error", error.empty() ? to_string(io) : error}});
                if (length) {
                    exchange.abort();
                } else {
                    exchange.finish();
                }
                return outcome;
            }
            exchange.finish();
            backend.pool.give_back(std::move(conn));
            return outcome;
        }
        if (Clock::now() >= total_deadline) {
            break;
        }
        // Back off before the next attempt, unless the client has left meanwhile.
        const auto wait = backoff.delay(outcome.attempts - 1, random_);
        const auto until = Clock::now() + wait;
        while (Clock::now() < until) {
            if (exchange.client_gone()) {
                outcome.client_gone = true;
                exchange.abort();
                return outcome;
            }
            std::this_thread::sleep_for(std::min<Duration>(milliseconds(10), until - Clock::now()));
        }
    }
    outcome.status = last_status == 504 ? 504 : 503;
    if (outcome.attempts == 0) {
        last_error = fmt::format("no worker became available within {} s", config_.queue_timeout);
    }
    respond_error(exchange, outcome.status, last_error, request_id, 1);
    return outcome;
}

}  // namespace llama_pool
