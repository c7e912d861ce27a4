#include "proxy/relay.hpp"

#include <fmt/format.h>

#include <stdexcept>

#include "common/backoff.hpp"
#include "common/error_body.hpp"
#include "common/http_client.hpp"
#include "proxy/affinity.hpp"
#include "proxy/relay_pump.hpp"
#include "proxy/reply_body.hpp"
#include "proxy/slot_use.hpp"
#include "proxy/sse_framer.hpp"
#include "proxy/usage_scanner.hpp"
#include "proxy/worker_dialect.hpp"

namespace llama_pool {

namespace {

constexpr const char* kComponent = "proxy";

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

}  // namespace

Relay::Relay(const PoolConfig& config, BackendRegistry& registry, Logger& log, RandomSource& random,
             PoolMetrics& metrics, std::string group)
    : config_(config),
      registry_(registry),
      log_(log),
      random_(random),
      metrics_(metrics),
      group_(std::move(group)),
      tenants_(config.tenants, !config.api_keys.empty() || !config.api_key_file.empty()),
      rules_{config.retry_attempts, from_seconds(config.retry_backoff_base),
             from_seconds(config.retry_backoff_cap), milliseconds(1000)},
      budget_(config.retry_budget_ratio, config.retry_budget_min) {}

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

// One attempt on one worker: the connection, the response head and what was read of the
// body before anything reached the client.
struct Attempt {
    HttpClientConnection conn;
    HttpResponseHead head;
    IoStatus io = IoStatus::ok;
    std::string error;
    bool connected = true;
    bool event_stream = false;  // Content-Type text/event-stream
    bool events = false;        // ... without a length: passed event by event
    std::optional<std::size_t> length;
    SseFramer framer;
    std::string bytes;  // what goes to the client right after the head
    bool done = false;  // `bytes` is the whole body
};

// A worker's 500, kept while another worker is asked for a second opinion.
struct KeptReply {
    int status = 0;
    Headers headers;
    std::string body;
};

}  // namespace

// One forward(): carries out RelayPlan's decisions. Lives on the stack of forward().
class Relay::Run {
  public:
    Run(Relay& relay, Exchange& exchange, const std::string& target, const std::string& request_id,
        const std::set<std::string>& avoid, const OutcomeSink& sink)
        : relay_(relay),
          exchange_(exchange),
          request_(exchange.request()),
          target_(target),
          request_id_(request_id),
          tenant_(relay.tenants_.identify(request_.headers, exchange.remote_address())),
          light_(slot_use(request_.method, std::string_view(target).substr(0, target.find('?'))) ==
                 SlotUse::light),
          sink_(sink),
          tried_(avoid) {
        outcome_.tenant = tenant_.label;
        outcome_.group = relay.group_;
    }
    ~Run() {
        if (second_opinion_for_) {
            relay_.registry_.report_abandoned(*second_opinion_for_);
        }
    }
    Run(const Run&) = delete;
    Run& operator=(const Run&) = delete;

    RelayOutcome run();

  private:
    TimePoint now() const { return relay_.registry_.time().now(); }
    RelayDeadlines make_deadlines() const;
    bool refused_early(const RelayDeadlines& deadlines);
    BackendRegistry::AcquireResult take_slot(std::uint64_t affinity);
    void send(Backend& backend, Attempt& at, TimePoint total_deadline);
    void prefetch(Backend& backend, Attempt& at, TimePoint total_deadline);
    AttemptReport report_for(const Attempt& at, std::optional<bool>& body_is_json) const;
    void account(const Decision& d, Backend& backend, Attempt& at);
    RelayOutcome commit(const Decision& d, Lease lease, Attempt at);
    bool hand_off(const std::shared_ptr<ReplyBody>& body);
    enum class Wait { waited, client_gone, woken };
    Wait back_off(Duration delay);
    RelayOutcome answer();
    RelayOutcome gone(bool client_left);
    void refuse(RejectReason reason, const std::string& message);

    Relay& relay_;
    Exchange& exchange_;
    const HttpRequest& request_;
    const std::string& target_;
    const std::string& request_id_;
    const TenantTicket tenant_;
    const bool light_;  // takes no generation slot: waits only for a connection (slot_use.hpp)
    const OutcomeSink& sink_;  // set: the body may be handed to the server's event loop
    RelayOutcome outcome_;
    std::unique_ptr<RelayPlan> plan_;
    std::set<std::string> tried_;
    std::string last_error_ = "no worker available";
    std::optional<KeptReply> first_500_;
    std::optional<std::string> second_opinion_for_;  // the worker whose 500 awaits a verdict
};

RelayOutcome Relay::forward(Exchange& exchange, const std::string& target,
                            const std::string& request_id, const std::set<std::string>& avoid,
                            const OutcomeSink& sink) {
    Run run(*this, exchange, target, request_id, avoid, sink);
    return run.run();
}

RelayDeadlines Relay::Run::make_deadlines() const {
    RelayDeadlines d;
    d.started = now();
    d.total = d.started + from_seconds(relay_.config_.total_timeout);
    d.queue = d.started + from_seconds(relay_.config_.queue_timeout);
    if (const auto own = client_deadline(request_.headers)) {
        d.total = std::min(d.total, d.started + *own);
        d.queue = std::min(d.queue, d.started + *own);
        d.client_set = true;
    }
    return d;
}

void Relay::Run::refuse(RejectReason reason, const std::string& message) {
    outcome_.status = 503;
    outcome_.rejected = reason;
    const auto retry_after =
        relay_.service_rate_.retry_after_seconds(relay_.registry_.waiting(), now());
    respond_error(exchange_, 503, message, request_id_, retry_after);
}

// Refuses now what cannot start in time, instead of after the client gave up. Only the
// waiters the fair queue serves first count: another tenant's flood does not.
bool Relay::Run::refused_early(const RelayDeadlines& deadlines) {
    const auto own = client_deadline(request_.headers);
    if (!own || light_) {
        return false;
    }
    const auto waiting = relay_.registry_.waiting_ahead_of(tenant_);
    if (!cannot_start_in_time(
            waiting, relay_.service_rate_.expected_wait(waiting, deadlines.started), *own)) {
        return false;
    }
    refuse(RejectReason::deadline,
           fmt::format("{} requests are queued ahead; this one cannot start within "
                       "its X-Request-Timeout of {:.1f} s",
                       waiting, to_seconds(*own)));
    return true;
}

RelayOutcome Relay::Run::run() {
    const auto deadlines = make_deadlines();
    if (refused_early(deadlines)) {
        return outcome_;
    }
    plan_ = std::make_unique<RelayPlan>(relay_.rules_, deadlines, relay_.budget_, relay_.random_);
    const auto affinity = relay_.affinity_key_for(request_);
    std::optional<bool> body_is_json;
    while (true) {
        auto acquired = take_slot(affinity);
        const auto granted =
            acquired.status == BackendRegistry::AcquireStatus::ok && acquired.lease.has_value();
        const auto slot =
            acquired.status == BackendRegistry::AcquireStatus::cancelled    ? SlotResult::cancelled
            : acquired.status == BackendRegistry::AcquireStatus::queue_full ? SlotResult::queue_full
            : granted                                                       ? SlotResult::granted
                                                                            : SlotResult::no_slot;
        const bool same_as_500 =
            granted && second_opinion_for_ && acquired.lease->backend().id == *second_opinion_for_;
        if (plan_->on_slot(slot, same_as_500) == Next::give_up) {
            acquired.lease.reset();
            return answer();
        }
        Backend& backend = acquired.lease->backend();
        outcome_.attempts = plan_->attempts();
        outcome_.worker = backend.id;
        tried_.insert(backend.id);
        Attempt at;
        send(backend, at, deadlines.total);
        if (at.io == IoStatus::ok) {
            prefetch(backend, at, deadlines.total);
        }
        if (at.io == IoStatus::peer_gone || at.io == IoStatus::woken) {
            // Closing the worker connection (at.conn goes out of scope) cancels the generation.
            relay_.registry_.report_abandoned(backend.id);
            return gone(at.io == IoStatus::peer_gone);
        }
        const auto decision = plan_->on_attempt(report_for(at, body_is_json), now());
        account(decision, backend, at);
        switch (decision.next) {
            case Next::commit:
                return commit(decision, std::move(*acquired.lease), std::move(at));
            case Next::give_up:
                acquired.lease.reset();  // the slot is free before the client hears why
                return answer();
            case Next::second_opinion:
            case Next::retry:
                outcome_.retry_reasons.push_back(*decision.retry);
                relay_.metrics_.retry(to_string(*decision.retry));
                break;
            case Next::attempt:
                throw std::logic_error("RelayPlan::on_attempt answered attempt");
        }
        acquired.lease.reset();  // free the slot while we back off
        if (decision.next == Next::retry) {
            if (const auto waited = back_off(decision.delay); waited != Wait::waited) {
                return gone(waited == Wait::client_gone);
            }
            plan_->on_backoff_over();
        }
    }
}

BackendRegistry::AcquireResult Relay::Run::take_slot(std::uint64_t affinity) {
    const auto queued_at = now();
    const auto gone = [this] { return exchange_.client_gone(); };
    auto acquired =
        light_ ? relay_.registry_.acquire_light(plan_->slot_deadline(), tried_, gone)
               : relay_.registry_.acquire(plan_->slot_deadline(), tried_, gone, affinity, tenant_);
    const auto waited = to_seconds(now() - queued_at);
    outcome_.queue_seconds += waited;
    relay_.metrics_.queue_wait(relay_.group_, waited);
    return acquired;
}

// Connects, sends the request and reads the response head. A pooled connection may have been
// closed by the worker's keep-alive timer just as we sent on it; that costs nothing to retry
// on a fresh connection, once.
void Relay::Run::send(Backend& backend, Attempt& at, TimePoint total_deadline) {
    const auto& config = relay_.config_;
    const auto headers = upstream_request_headers(request_, request_id_, backend.api_key,
                                                  exchange_.remote_address());
    const auto host_header = host_header_for(backend.pool.host(), backend.pool.port());
    for (int fresh_try = 0; fresh_try < 2; ++fresh_try) {
        bool reused = false;
        at.conn = backend.pool.take(now() + from_seconds(config.connect_timeout), reused, at.error,
                                    fresh_try == 0);
        if (!at.conn.connected()) {
            at.connected = false;
            at.io = IoStatus::error;
            at.error = "connect: " + at.error;
            return;
        }
        const auto head_deadline =
            std::min(total_deadline, now() + from_seconds(config.response_timeout));
        at.io = at.conn.send_request(request_.method, target_, host_header, headers, request_.body,
                                     head_deadline, exchange_.watch());
        if (at.io == IoStatus::ok) {
            at.io = at.conn.read_head(at.head, request_.method == "HEAD", head_deadline, at.error,
                                      exchange_.watch());
        }
        const bool stale_reuse = reused && (at.io == IoStatus::eof || at.io == IoStatus::error) &&
                                 at.error != "incomplete response head";
        if (!stale_reuse) {
            return;
        }
    }
}

// Reads the start of the body before anything reaches the client: a failure until then is
// retried like one before the head. An event stream is read up to its first whole event; any
// other body whole, when it is not too big.
void Relay::Run::prefetch(Backend& backend, Attempt& at, TimePoint total_deadline) {
    const auto content_type = at.head.headers.get("Content-Type").value_or("");
    const auto framing = response_framing(at.head, request_.method == "HEAD");
    if (framing.framing.kind == BodyFraming::Kind::length ||
        framing.framing.kind == BodyFraming::Kind::none) {
        at.length = framing.framing.length;
    }
    at.event_stream = content_type.rfind("text/event-stream", 0) == 0;
    at.events = at.event_stream && !at.length;
    if (plan_->retries_status(at.head.status)) {
        return;  // not passed on: drained in account() when retried
    }
    const bool buffer_whole = !at.events && !(at.length && *at.length > kMaxBufferedReply);
    while (at.events || buffer_whole) {
        std::string piece;
        const auto idle_deadline =
            std::min(total_deadline, now() + from_seconds(relay_.config_.stream_idle_timeout));
        at.io = at.conn.read_body(piece, at.done, idle_deadline, at.error, exchange_.watch());
        if (at.io != IoStatus::ok) {
            if (at.error.empty() && at.io != IoStatus::peer_gone && at.io != IoStatus::woken) {
                at.error = "response cut off";
            }
            return;
        }
        backend.received.fetch_add(piece.size(), std::memory_order_relaxed);
        if (at.events) {
            at.framer.feed(piece);
            at.bytes = at.framer.take();
            if (at.done) {
                at.bytes += at.framer.pending();
            }
            if (!at.bytes.empty() || at.done) {
                return;
            }
        } else {
            at.bytes += piece;
            if (at.done || at.bytes.size() > kMaxBufferedReply) {
                return;
            }
        }
    }
}

AttemptReport Relay::Run::report_for(const Attempt& at, std::optional<bool>& body_is_json) const {
    AttemptReport report;
    report.io = at.io;
    report.connected = at.connected;
    report.status = at.head.status;
    report.whole_reply = at.done && !at.events;
    report.pool_slots = relay_.registry_.configured_capacity();
    if (at.io == IoStatus::ok && at.head.status == 500) {
        if (!body_is_json) {
            body_is_json = request_.body.empty() || nlohmann::json::accept(request_.body);
        }
        report.request_is_json = *body_is_json;
        report.blames_request = report.whole_reply && report.request_is_json &&
                                classify_worker_500(at.bytes) == Worker500::request_mistake;
    }
    return report;
}

// What an attempt's decision means for the worker, the metrics and the log.
void Relay::Run::account(const Decision& d, Backend& backend, Attempt& at) {
    auto& registry = relay_.registry_;
    if (at.io != IoStatus::ok) {
        last_error_ = fmt::format("worker {}: {} ({})", backend.id,
                                  at.error.empty() ? to_string(at.io) : at.error, to_string(at.io));
        // Nothing listens there: mark it down before reporting the failure, since the report
        // hands free slots to waiting requests and a dead worker has free slots.
        if (at.error.find("Connection refused") != std::string::npos) {
            registry.report_refused(backend.id);
        }
        registry.report(backend.id, false);
        relay_.metrics_.upstream(relay_.group_, backend.id, to_string(d.outcome));
        relay_.log_.warn(kComponent, "upstream_failed",
                         {{"request_id", request_id_},
                          {"worker", backend.id},
                          {"attempt", plan_->attempts()},
                          {"error", last_error_}});
        return;
    }
    if (d.next == Next::second_opinion) {
        first_500_ = KeptReply{at.head.status, at.head.headers, at.bytes};
        backend.pool.give_back(std::move(at.conn));
        last_error_ = fmt::format("worker {} answered 500", backend.id);
        relay_.metrics_.upstream(relay_.group_, backend.id, to_string(d.outcome));
        relay_.log_.warn(
            kComponent, "upstream_500_second_opinion",
            {{"request_id", request_id_}, {"worker", backend.id}, {"attempt", plan_->attempts()}});
        second_opinion_for_ = backend.id;  // its verdict waits for the other worker's answer
        return;
    }
    if (d.outcome == AttemptOutcome::status_5xx_retried) {
        // A status worth another worker. Its small error body is read so that the connection
        // can be reused.
        std::string discard;
        bool done = false;
        const auto drain_deadline = now() + seconds(2);
        while (!done && discard.size() < 64 * 1024 &&
               at.conn.read_body(discard, done, drain_deadline, at.error) == IoStatus::ok) {
        }
        if (done) {
            backend.pool.give_back(std::move(at.conn));
        }
        last_error_ = fmt::format("worker {} answered {}", backend.id, at.head.status);
        registry.report(backend.id, false);
        relay_.metrics_.upstream(relay_.group_, backend.id, to_string(d.outcome));
        relay_.log_.warn(kComponent, "upstream_retryable_status",
                         {{"request_id", request_id_},
                          {"worker", backend.id},
                          {"attempt", plan_->attempts()},
                          {"status", at.head.status}});
        return;
    }
    if (d.second_opinion == SecondOpinion::skipped) {
        relay_.metrics_.second_opinion(SecondOpinion::skipped, 0);
    } else if (d.second_opinion && second_opinion_for_) {
        registry.report(*second_opinion_for_, !d.earlier_worker_fault);
        relay_.metrics_.second_opinion(*d.second_opinion, to_seconds(d.second_opinion_took));
        second_opinion_for_.reset();
        first_500_.reset();
    }
}

RelayOutcome Relay::Run::commit(const Decision& d, Lease lease, Attempt at) {
    outcome_.status = at.head.status;
    outcome_.retry_refused = plan_->retry_refused();
    auto length = at.length;
    if (at.done && !length && !at.events) {
        length = at.bytes.size();  // a stream stays chunked, as the worker sent it
    }
    const auto head = client_response_headers(at.head.headers, request_id_);
    auto body = std::make_shared<ReplyBody>(
        relay_,
        ReplyBody::Start{std::move(lease), std::move(at.conn), at.events, at.event_stream,
                         std::move(at.framer), d.blame, d.outcome, plan_->deadlines().total,
                         request_id_},
        std::move(outcome_));
    std::string first;
    body->on_piece(at.bytes, at.done, first, true);  // a whole body frees the worker at once
    if (!exchange_.begin(at.head.status, head, length)) {
        body->client_gone();
        return body->outcome();
    }
    body->outcome().first_byte_seconds = to_seconds(now() - plan_->deadlines().started);
    if (!first.empty() && !exchange_.write(first)) {
        body->client_gone();
        exchange_.abort();
        return body->outcome();
    }
    if (!body->released() && sink_ && hand_off(body)) {
        RelayOutcome pending = body->outcome();
        pending.handed_off = true;
        return pending;
    }
    return relay_body_blocking(exchange_, *body);
}

// Hands the rest of a streamed body to the server's event loop, so that no thread waits for
// the worker between two tokens. False when the exchange cannot take it (an in-process one).
bool Relay::Run::hand_off(const std::shared_ptr<ReplyBody>& body) {
    body->keep_connection();  // the event loop watches its fd until the pump is gone
    auto pump = std::make_unique<RelayPump>(body, sink_);
    auto* const taken = pump.get();
    if (!exchange_.hand_off(std::move(pump))) {
        return false;  // the refused pump is gone without a word; the body is still ours
    }
    // Safe: the server calls the pump only after this handler has returned.
    taken->taken(std::move(plan_));
    return true;
}

// Waits `delay` before the next attempt, or until the client leaves or the server stops.
Relay::Run::Wait Relay::Run::back_off(Duration delay) {
    const auto until = now() + delay;
    const auto watch = exchange_.watch();
    while (true) {
        if (exchange_.client_gone()) {
            return Wait::client_gone;
        }
        const auto left = until - now();
        if (left <= Duration::zero()) {
            return Wait::waited;
        }
        const auto io = wait_watch(watch, Clock::now() + left);
        if (io == IoStatus::peer_gone) {
            return Wait::client_gone;
        }
        if (io == IoStatus::woken) {
            return exchange_.client_gone() ? Wait::client_gone : Wait::woken;
        }
    }
}

RelayOutcome Relay::Run::gone(bool client_left) {
    outcome_.client_gone = client_left;
    exchange_.abort();
    return outcome_;
}

RelayOutcome Relay::Run::answer() {
    outcome_.retry_refused = plan_->retry_refused();
    const auto& d = plan_->deadlines();
    switch (plan_->answer()) {
        case Answer::client_gone:
            return gone(true);
        case Answer::queue_full:
            refuse(RejectReason::queue_full,
                   fmt::format("the pool's queue is full ({} requests waiting)",
                               relay_.config_.queue_max));
            return outcome_;
        case Answer::deadline:
        case Answer::queue_timeout:
            refuse(plan_->answer() == Answer::deadline ? RejectReason::deadline
                                                       : RejectReason::queue_timeout,
                   fmt::format("no worker slot became free within {:.1f} s",
                               to_seconds(std::min(d.queue, d.total) - d.started)));
            return outcome_;
        case Answer::first_500:
            // No other worker gave a verdict in time: the client gets the worker's own answer.
            relay_.metrics_.second_opinion(SecondOpinion::no_worker_free,
                                           to_seconds(now() - plan_->second_opinion_since()));
            outcome_.status = first_500_->status;
            exchange_.respond(first_500_->status,
                              client_response_headers(first_500_->headers, request_id_),
                              std::move(first_500_->body));
            return outcome_;
        case Answer::upstream_error:
            break;
    }
    outcome_.status = plan_->final_status();
    respond_error(exchange_, outcome_.status, last_error_, request_id_,
                  relay_.service_rate_.retry_after_seconds(relay_.registry_.waiting(), now()));
    return outcome_;
}

}  // namespace llama_pool
