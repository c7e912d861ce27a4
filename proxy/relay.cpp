#include "proxy/relay.hpp"

#include <fmt/format.h>

#include <thread>

#include "common/backoff.hpp"
#include "common/error_body.hpp"
#include "common/http_client.hpp"
#include "proxy/affinity.hpp"
#include "proxy/sse_framer.hpp"
#include "proxy/usage_scanner.hpp"
#include "proxy/worker_dialect.hpp"

namespace llama_pool {

namespace {

constexpr const char* kComponent = "proxy";
// How long a second opinion on a worker's 500 may wait for another worker's slot. Past it the
// client gets the first 500 as it was: on a busy pool the wait would otherwise be a whole
// generation (22 s measured on BitNet's fork) for an answer that is most often the same.
constexpr auto kSecondOpinionWait = milliseconds(1000);

bool retryable_status(int status) {
    return status == 502 || status == 503 || status == 504;
}

void respond_error(Exchange& exchange, int status, std::string_view message,
                   const std::string& request_id, std::optional<int> retry_after = {}) {
    Headers headers;
    headers.add("Content-Type", "application/json; charset=utf-8");
    headers.add("X-Request-Id", request_id);
    if (retry_after) {
        headers.add("Retry-After", std::to_string(*retry_after));
    }
    exchange.respond(status, std::move(headers), make_error_body(status, message));
}

// Brackets a request for the retry budget.
struct BudgetScope {
    RetryBudget& budget;
    explicit BudgetScope(RetryBudget& b) : budget(b) { budget.request_started(); }
    ~BudgetScope() { budget.request_finished(); }
};

}  // namespace

std::optional<Duration> client_deadline(const Headers& headers) {
    const auto value = headers.get("X-Request-Timeout");
    if (!value) {
        return std::nullopt;
    }
    try {
        std::size_t used = 0;
        const double s = std::stod(std::string(*value), &used);
        if (used == value->size() && s > 0 && s < 7 * 86400) {
            return from_seconds(s);
        }
    } catch (const std::exception&) {
    }
    return std::nullopt;
}

std::uint64_t Relay::affinity_key_for(const HttpRequest& request) const {
    // A prompt sits a few levels deep; a body nested deeper than this is not worth a DOM
    // (an absurdly nested one would cost memory in proportion), and simply gets no affinity.
    constexpr std::size_t kMaxAffinityNesting = 256;
    if (config_.balancer != "prefix-affinity" || request.body.empty() ||
        !json_nesting_at_most(request.body, kMaxAffinityNesting)) {
        return 0;
    }
    const auto body = nlohmann::json::parse(request.body, nullptr, false);
    if (!body.is_object()) {
        return 0;
    }
    return affinity_key(prompt_text(body), static_cast<std::size_t>(config_.affinity_prefix_chars));
}

void Relay::refuse(Exchange& exchange, RelayOutcome& outcome, const std::string& reason,
                   const std::string& message, const std::string& request_id) {
    outcome.status = 503;
    outcome.rejected = reason;
    const auto retry_after = service_rate_.retry_after_seconds(registry_.waiting(), Clock::now());
    respond_error(exchange, 503, message, request_id, retry_after);
}

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
        // RFC 9110 §7.6.2: an OPTIONS or TRACE that may go further is forwarded with one hop
        // less (zero is answered by the pool itself, in ProxyServer::handle).
        if (iequals(name, "Max-Forwards") &&
            (request.method == "OPTIONS" || request.method == "TRACE")) {
            if (const auto hops = max_forwards(request.headers); hops && *hops > 0) {
                out.add(name, std::to_string(*hops - 1));
                continue;
            }
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
    // RFC 9110 §7.6.3: a gateway must add itself to Via on each request it forwards. The
    // received Via lines stay where they were, so this one comes last, as the list requires.
    out.add("Via", fmt::format("1.{} llama-pool", request.version_minor));
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

namespace {

// A JSON reply is read whole before its head goes to the client (up to this size), so that a
// worker that dies while sending it is retried instead of cutting the client's reply.
constexpr std::size_t kMaxBufferedReply = 8 * 1024 * 1024;

// One attempt's verdict on its worker, for the circuit breaker: exactly one report per
// attempt, whatever path ends it. An attempt that ends without one (its client left) gives
// back the half-open trial slot it may hold.
class AttemptVerdict {
  public:
    AttemptVerdict(BackendRegistry& registry, std::string id)
        : registry_(registry), id_(std::move(id)) {}
    ~AttemptVerdict() {
        if (!reported_) {
            registry_.report_abandoned(id_);
        }
    }
    AttemptVerdict(const AttemptVerdict&) = delete;
    AttemptVerdict& operator=(const AttemptVerdict&) = delete;

    void report(bool success) {
        if (!reported_) {
            reported_ = true;
            registry_.report(id_, success);
        }
    }
    // The verdict is left to someone else (a 500 waiting for a second opinion).
    void hand_over() { reported_ = true; }

  private:
    BackendRegistry& registry_;
    std::string id_;
    bool reported_ = false;
};

// What was read of a response body before committing to it.
struct Prefetch {
    IoStatus io = IoStatus::ok;  // not ok: the worker failed before anything was committed
    std::string error;
    std::string bytes;  // what goes to the client right after the head
    bool done = false;  // `bytes` is the whole body
};

}  // namespace

RelayOutcome Relay::forward(Exchange& exchange, const std::string& target,
                            const std::string& request_id, const std::set<std::string>& avoid) {
    const auto& request = exchange.request();
    RelayOutcome outcome;
    BudgetScope budget_scope(budget_);
    const auto started = Clock::now();
    const auto tenant = tenants_.identify(request.headers, exchange.remote_address());
    outcome.tenant = tenant.label;
    auto total_deadline = started + from_seconds(config_.total_timeout);
    auto queue_deadline = started + from_seconds(config_.queue_timeout);
    if (const auto own = client_deadline(request.headers)) {
        total_deadline = std::min(total_deadline, started + *own);
        queue_deadline = std::min(queue_deadline, started + *own);
        // Refuse now what cannot start in time, instead of after the client gave up. Only
        // the waiters the fair queue serves first count: another tenant's flood does not.
        const auto waiting = registry_.waiting_ahead_of(tenant);
        if (waiting > 0 && service_rate_.expected_wait(waiting, started) > *own) {
            refuse(exchange, outcome, "deadline",
                   fmt::format("{} requests are queued ahead; this one cannot start within its "
                               "X-Request-Timeout of {:.1f} s",
                               waiting, to_seconds(*own)),
                   request_id);
            return outcome;
        }
    }
    const auto affinity = affinity_key_for(request);
    const ExponentialBackoff backoff(from_seconds(config_.retry_backoff_base),
                                     from_seconds(config_.retry_backoff_cap));
    std::set<std::string> tried = avoid;
    std::string last_error = "no worker available";
    int last_status = 503;
    bool holding_retry = false;
    struct RetrySlot {
        RetryBudget& budget;
        bool& held;
        ~RetrySlot() {
            if (held) {
                budget.retry_finished();
            }
        }
    } retry_slot{budget_, holding_retry};
    // llama-server answers 500 both when it fails and when the request is bad (malformed
    // JSON, a field of the wrong type; older forks also a missing field). A 500 to a body
    // that is not JSON, or whose message comes from reading the request, is the client's;
    // any other 500 gets a second opinion from another worker, if one has a slot free within
    // kSecondOpinionWait: served there, the first worker was at fault; a 500 there too, the
    // request was. Without one the client gets the first 500 unchanged.
    std::optional<bool> body_is_json;
    auto request_is_json = [&] {
        if (!body_is_json) {
            body_is_json = request.body.empty() || nlohmann::json::accept(request.body);
        }
        return *body_is_json;
    };
    std::optional<std::string> second_opinion_for;  // the worker whose 500 awaits one
    TimePoint second_opinion_started{};
    struct KeptReply {
        int status = 0;
        Headers headers;
        std::string body;
    };
    std::optional<KeptReply> first_500;  // answered as is when no second opinion comes
    struct PendingVerdict {
        BackendRegistry& registry;
        std::optional<std::string>& id;
        ~PendingVerdict() {
            if (id) {
                registry.report_abandoned(*id);
            }
        }
    } pending_verdict{registry_, second_opinion_for};
    // Whether one more attempt may follow; says why not in outcome.retry_refused.
    auto may_retry = [&]() -> bool {
        if (outcome.attempts >= config_.retry_attempts) {
            outcome.retry_refused = "attempts";
            return false;
        }
        if (Clock::now() >= total_deadline) {
            outcome.retry_refused = "deadline";
            return false;
        }
        if (!holding_retry && !budget_.try_start_retry(registry_.configured_capacity())) {
            outcome.retry_refused = "budget";
            return false;
        }
        holding_retry = true;
        return true;
    };

    while (true) {
        const auto queued_at = Clock::now();
        auto acquire_deadline = std::min(queue_deadline, total_deadline);
        if (second_opinion_for) {
            acquire_deadline =
                std::min(acquire_deadline, second_opinion_started + kSecondOpinionWait);
        }
        auto acquired = registry_.acquire(
            acquire_deadline, tried, [&] { return exchange.client_gone(); }, affinity, tenant);
        const auto waited = to_seconds(Clock::now() - queued_at);
        outcome.queue_seconds += waited;
        metrics_.queue_wait(group_, waited);
        if (acquired.status == BackendRegistry::AcquireStatus::cancelled) {
            outcome.client_gone = true;
            exchange.abort();
            return outcome;
        }
        if (acquired.status == BackendRegistry::AcquireStatus::queue_full) {
            refuse(exchange, outcome, "queue_full",
                   fmt::format("the pool's queue is full ({} requests waiting)", config_.queue_max),
                   request_id);
            return outcome;
        }
        if (!acquired.lease) {
            break;
        }
        if (second_opinion_for && acquired.lease->backend().id == *second_opinion_for) {
            // Only the worker that answered 500 had a slot: asking it again proves nothing.
            break;
        }
        ++outcome.attempts;
        Backend& backend = acquired.lease->backend();
        outcome.worker = backend.id;
        tried.insert(backend.id);
        AttemptVerdict verdict(registry_, backend.id);

        const auto headers = upstream_request_headers(request, request_id, backend.api_key,
                                                      exchange.remote_address());
        const auto host_header = host_header_for(backend.pool.host(), backend.pool.port());
        HttpClientConnection conn;
        HttpResponseHead head;
        IoStatus io = IoStatus::ok;
        std::string error;
        bool connected = true;
        // A pooled connection may have been closed by the worker's keep-alive timer just as
        // we sent on it; that costs nothing to retry on a fresh connection, once.
        for (int fresh_try = 0; fresh_try < 2; ++fresh_try) {
            bool reused = false;
            conn = backend.pool.take(Clock::now() + from_seconds(config_.connect_timeout), reused,
                                     error, fresh_try == 0);
            if (!conn.connected()) {
                connected = false;
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
            const bool stale_reuse = reused && (io == IoStatus::eof || io == IoStatus::error) &&
                                     error != "incomplete response head";
            if (!stale_reuse) {
                break;
            }
        }
        if (io == IoStatus::peer_gone || io == IoStatus::woken) {
            // Closing the worker connection (conn goes out of scope) cancels the generation.
            outcome.client_gone = io == IoStatus::peer_gone;
            exchange.abort();
            return outcome;
        }
        const auto drain_for_reuse = [&] {
            // The small error body, so that the connection can be reused.
            std::string discard;
            bool done = false;
            const auto drain_deadline = Clock::now() + seconds(2);
            while (!done && discard.size() < 64 * 1024 &&
                   conn.read_body(discard, done, drain_deadline, error) == IoStatus::ok) {
            }
            if (done) {
                backend.pool.give_back(std::move(conn));
            }
        };
        const auto content_type = head.headers.get("Content-Type").value_or("");
        const auto framing = response_framing(head, request.method == "HEAD");
        std::optional<std::size_t> length;
        if (framing.framing.kind == BodyFraming::Kind::length ||
            framing.framing.kind == BodyFraming::Kind::none) {
            length = framing.framing.length;
        }
        // An event stream goes out event by event; anything else is read whole first when
        // it is not too big.
        const bool events = content_type.rfind("text/event-stream", 0) == 0 && !length;
        SseFramer framer;
        Prefetch pre;
        int retry_status = 0;
        const auto failed_attempt = [&](IoStatus failed_io, const std::string& why) {
            last_error =
                fmt::format("worker {}: {} ({})", backend.id,
                            why.empty() ? to_string(failed_io) : why, to_string(failed_io));
            last_status = failed_io == IoStatus::timeout ? 504 : 502;
            // Nothing listens there: mark it down before reporting the failure, since the
            // report hands free slots to waiting requests and a dead worker has free slots.
            if (why.find("Connection refused") != std::string::npos) {
                registry_.report_refused(backend.id);
            }
            verdict.report(false);
            metrics_.upstream(
                group_, backend.id,
                to_string(to_outcome(classify_attempt_failure(failed_io, connected))));
            log_.warn(kComponent, "upstream_failed",
                      {{"request_id", request_id},
                       {"worker", backend.id},
                       {"attempt", outcome.attempts},
                       {"error", last_error}});
            io = failed_io;
        };
        // A status worth another worker: what the client gets if no retry succeeds.
        const auto retry_after_status = [&](int client_status) {
            drain_for_reuse();
            retry_status = head.status;
            last_error = fmt::format("worker {} answered {}", backend.id, head.status);
            last_status = client_status;
            metrics_.upstream(group_, backend.id, to_string(AttemptOutcome::status_5xx_retried));
            log_.warn(kComponent, "upstream_retryable_status",
                      {{"request_id", request_id},
                       {"worker", backend.id},
                       {"attempt", outcome.attempts},
                       {"status", head.status}});
        };
        if (io != IoStatus::ok) {
            failed_attempt(io, error);
        } else if (retryable_status(head.status) && outcome.attempts < config_.retry_attempts) {
            retry_after_status(head.status);
            verdict.report(false);
        } else {
            // Read the start of the body before anything reaches the client: a failure until
            // then is retried like one before the head.
            const bool buffer_whole = !events && !(length && *length > kMaxBufferedReply);
            while (events || buffer_whole) {
                std::string piece;
                const auto idle_deadline = std::min(
                    total_deadline, Clock::now() + from_seconds(config_.stream_idle_timeout));
                pre.io =
                    conn.read_body(piece, pre.done, idle_deadline, pre.error, exchange.watch());
                if (pre.io != IoStatus::ok) {
                    break;
                }
                backend.received.fetch_add(piece.size(), std::memory_order_relaxed);
                if (events) {
                    framer.feed(piece);
                    pre.bytes = framer.take();
                    if (pre.done) {
                        pre.bytes += framer.pending();
                    }
                    if (!pre.bytes.empty() || pre.done) {
                        break;
                    }
                } else {
                    pre.bytes += piece;
                    if (pre.done || pre.bytes.size() > kMaxBufferedReply) {
                        break;
                    }
                }
            }
            if (pre.io == IoStatus::peer_gone || pre.io == IoStatus::woken) {
                outcome.client_gone = pre.io == IoStatus::peer_gone;
                exchange.abort();
                return outcome;
            }
            if (pre.io != IoStatus::ok) {
                failed_attempt(pre.io,
                               pre.error.empty() ? std::string("response cut off") : pre.error);
            }
        }
        bool request_mistake = false;
        if (io == IoStatus::ok && retry_status == 0 && head.status == 500 && !second_opinion_for &&
            request_is_json() && pre.done && !events) {
            if (classify_worker_500(pre.bytes) == Worker500::request_mistake) {
                request_mistake = true;
                metrics_.second_opinion(SecondOpinion::skipped, 0);
            } else if (may_retry()) {
                first_500 = KeptReply{head.status, head.headers, pre.bytes};
                backend.pool.give_back(std::move(conn));
                retry_status = 500;
                last_error = fmt::format("worker {} answered 500", backend.id);
                metrics_.upstream(group_, backend.id,
                                  to_string(AttemptOutcome::status_5xx_retried));
                log_.warn(kComponent, "upstream_500_second_opinion",
                          {{"request_id", request_id},
                           {"worker", backend.id},
                           {"attempt", outcome.attempts}});
                second_opinion_for = backend.id;
                second_opinion_started = Clock::now();
                verdict.hand_over();
            }
        }
        if (io == IoStatus::ok && retry_status == 0) {
            // Commit: from here on the client sees this worker's response, and no retry.
            // A 5xx counts against the worker even when it is passed through, unless it is
            // the request's own 500.
            bool worker_fault = head.status >= 500;
            if (head.status == 500 &&
                (second_opinion_for || !request_is_json() || request_mistake)) {
                worker_fault = false;
            }
            if (second_opinion_for) {
                // Served elsewhere: the earlier 500 was that worker's fault.
                registry_.report(*second_opinion_for, head.status == 500);
                second_opinion_for.reset();
                first_500.reset();
                metrics_.second_opinion(head.status == 500 ? SecondOpinion::failed_elsewhere
                                                           : SecondOpinion::served_elsewhere,
                                        to_seconds(Clock::now() - second_opinion_started));
            }
            outcome.status = head.status;
            if (pre.done && !length && !events) {
                length = pre.bytes.size();  // a stream stays chunked, as the worker sent it
            }
            UsageScanner usage;
            const auto upstream_outcome = [&](AttemptOutcome what) {
                metrics_.upstream(group_, outcome.worker, to_string(what));
            };
            // Once the worker has sent all of its reply its slot is free: hand the slot on
            // before the client sees the end. Otherwise a client that sends its next request
            // at once can find this worker still full and be sent to another one, where prefix
            // affinity loses the prompt cache. `backend` may not outlive the lease, so nothing
            // below uses it once this has run.
            const auto release_worker = [&] {
                verdict.report(!worker_fault);
                upstream_outcome(head.status >= 500 ? AttemptOutcome::status_5xx
                                                    : AttemptOutcome::ok);
                backend.pool.give_back(std::move(conn));
                acquired.lease.reset();
            };
            if (pre.done) {
                release_worker();
            }
            if (!exchange.begin(head.status, client_response_headers(head.headers, request_id),
                                length)) {
                outcome.client_gone = true;
                return outcome;
            }
            outcome.first_byte_seconds = to_seconds(Clock::now() - started);
            usage.feed(pre.bytes);
            if (!pre.bytes.empty() && !exchange.write(pre.bytes)) {
                outcome.client_gone = true;
                exchange.abort();
                return outcome;
            }
            bool done = pre.done;
            std::string piece;
            while (!done) {
                piece.clear();
                const auto idle_deadline = std::min(
                    total_deadline, Clock::now() + from_seconds(config_.stream_idle_timeout));
                io = conn.read_body(piece, done, idle_deadline, error, exchange.watch());
                if (io != IoStatus::ok) {
                    break;
                }
                // Before release_worker(): `backend` is valid while the lease is held.
                backend.received.fetch_add(piece.size(), std::memory_order_relaxed);
                if (events) {
                    framer.feed(piece);
                    piece = framer.take();
                    if (done) {
                        piece += framer.pending();
                    }
                }
                usage.feed(piece);
                if (done) {
                    release_worker();
                }
                if (!piece.empty() && !exchange.write(piece)) {
                    outcome.client_gone = true;
                    exchange.abort();
                    return outcome;
                }
            }
            if (io == IoStatus::peer_gone || io == IoStatus::woken) {
                outcome.client_gone = io == IoStatus::peer_gone;
                exchange.abort();
                return outcome;
            }
            service_rate_.on_completion(Clock::now());
            if (const auto counts =
                    usage.finish(events || content_type.rfind("text/event-stream", 0) == 0);
                counts.found) {
                metrics_.tokens(group_, outcome.worker, counts.predicted, counts.prompt);
                outcome.tokens_predicted = counts.predicted;
            }
            if (io != IoStatus::ok) {
                // The worker broke mid-response. A stream ends with what was produced and an
                // error event that says so; any other body can only be cut.
                outcome.upstream_broke = true;
                verdict.report(false);
                upstream_outcome(AttemptOutcome::broke_mid_response);
                const auto why = error.empty() ? std::string(to_string(io)) : error;
                log_.warn(kComponent, "upstream_broke_mid_response",
                          {{"request_id", request_id}, {"worker", backend.id}, {"error", why}});
                if (events) {
                    const int status = io == IoStatus::timeout ? 504 : 502;
                    exchange.write(sse_error_event(
                        status, fmt::format("worker {} failed after the stream had started: {}",
                                            backend.id, why)));
                    exchange.finish();
                } else {
                    exchange.abort();
                }
                return outcome;
            }
            exchange.finish();
            return outcome;
        }
        // Whether, and when, to try again.
        if (retry_status != 500 && !may_retry()) {
            break;
        }
        outcome.retry_reasons.push_back(
            retry_status != 0 ? retry_reason_for_status(retry_status)
                              : to_retry_reason(classify_attempt_failure(io, connected)));
        metrics_.retry(to_string(outcome.retry_reasons.back()));
        acquired.lease.reset();  // free the slot while we back off
        // A second opinion goes to another worker at once: backing off helps a worker recover,
        // and the one that answered 500 is not asked again.
        const auto wait =
            retry_status == 500 ? Duration::zero() : backoff.delay(outcome.attempts - 1, random_);
        const auto until = std::min(total_deadline, Clock::now() + wait);
        while (Clock::now() < until) {
            if (exchange.client_gone()) {
                outcome.client_gone = true;
                exchange.abort();
                return outcome;
            }
            std::this_thread::sleep_for(std::min<Duration>(milliseconds(10), until - Clock::now()));
        }
    }
    if (outcome.attempts == 0) {
        const bool deadline_first =
            queue_deadline > total_deadline || client_deadline(request.headers).has_value();
        refuse(exchange, outcome, deadline_first ? "deadline" : "queue_timeout",
               fmt::format("no worker slot became free within {:.1f} s",
                           to_seconds(std::min(queue_deadline, total_deadline) - started)),
               request_id);
        return outcome;
    }
    if (first_500) {
        // No other worker gave a verdict in time: the client gets the worker's own answer.
        metrics_.second_opinion(SecondOpinion::no_worker_free,
                                to_seconds(Clock::now() - second_opinion_started));
        outcome.status = first_500->status;
        exchange.respond(first_500->status, client_response_headers(first_500->headers, request_id),
                         std::move(first_500->body));
        return outcome;
    }
    outcome.status = last_status == 504 ? 504 : 503;
    respond_error(exchange, outcome.status, last_error, request_id,
                  service_rate_.retry_after_seconds(registry_.waiting(), Clock::now()));
    return outcome;
}

}  // namespace llama_pool
