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

// One forward(), as a state machine that carries out RelayPlan's decisions. step() goes as far
// as it can without waiting and then says what it waits for (wait_fd(), deadline(), the
// client). forward() either drives it on its own thread, or, when the exchange can defer
// (the HTTP server's), hands it to the server's event loop while it waits: a request queued
// for a slot or waiting for a worker's first token then holds no thread.
class Relay::Run {
  public:
    Run(Relay& relay, Exchange& exchange, std::string target, std::string request_id,
        const std::set<std::string>& avoid, OutcomeSink sink)
        : relay_(relay),
          exchange_(&exchange),
          target_(std::move(target)),
          request_id_(std::move(request_id)),
          tenant_(relay.tenants_.identify(exchange.request().headers, exchange.remote_address())),
          light_(slot_use(exchange.request().method, std::string_view(target_).substr(
                                                         0, target_.find('?'))) == SlotUse::light),
          sink_(std::move(sink)),
          tried_(avoid) {
        outcome_.tenant = tenant_.label;
        outcome_.group = relay.group_;
    }
    ~Run() {
        if (second_opinion_for_) {
            relay_.registry_.report_abandoned(*second_opinion_for_);
        }
        if (phase_ == Phase::head || phase_ == Phase::body) {
            relay_.registry_.report_abandoned(lease_->backend().id);  // ended without stop()
        }
    }
    Run(const Run&) = delete;
    Run& operator=(const Run&) = delete;

    // Goes on until it must wait (`wait`) or the request is answered (`done`).
    Deferred::Step step(Exchange& exchange);
    // What it waits for: readable, or -1 for only the deadline and the client.
    int wait_fd() const;
    // When to call step() again even if nothing happened, on the steady clock.
    TimePoint deadline() const;
    // The server stops (or an in-process requester cancelled): ends the request now, without
    // a word to the client, whose connection the caller cuts.
    void stop(bool client_left);
    // After `done`: what happened. Says handed_off when the body went to the event loop, whose
    // pump reports the final outcome to the sink.
    const RelayOutcome& result() const { return result_; }
    const OutcomeSink& sink() const { return sink_; }

  private:
    enum class Phase { start, want_slot, queued, head, body, backoff, done };
    enum class Flow { next, wait, done };

    TimePoint now() const { return relay_.registry_.time().now(); }
    const HttpRequest& request() const { return exchange_->request(); }
    Flow start();
    Flow want_slot();
    Flow queued();
    Flow on_slot(BackendRegistry::AcquireResult acquired);
    Flow send(bool fresh);
    Flow head();
    Flow body();
    Flow read_body(bool woken);
    Flow decide();
    Flow backoff();
    Flow abandon(bool client_left);
    Flow finish(RelayOutcome outcome);

    RelayDeadlines make_deadlines() const;
    bool refused_early(const RelayDeadlines& deadlines);
    AttemptReport report_for(std::optional<bool>& body_is_json) const;
    void account(const Decision& d, Backend& backend);
    RelayOutcome commit(const Decision& d);
    bool hand_off(const std::shared_ptr<ReplyBody>& body);
    RelayOutcome answer();
    RelayOutcome gone(bool client_left);
    void refuse(RejectReason reason, const std::string& message);

    Relay& relay_;
    Exchange* exchange_;  // the one step() was called with: a deferred exchange may move
    const std::string target_;
    const std::string request_id_;
    const TenantTicket tenant_;
    const bool light_;  // takes no generation slot: waits only for a connection (slot_use.hpp)
    const OutcomeSink sink_;  // set: the body may be handed to the server's event loop
    Phase phase_ = Phase::start;
    RelayOutcome outcome_;
    RelayOutcome result_;
    std::unique_ptr<RelayPlan> plan_;
    std::uint64_t affinity_ = 0;
    std::optional<bool> body_is_json_;
    std::set<std::string> tried_;
    std::string last_error_ = "no worker available";
    std::optional<KeptReply> first_500_;
    std::optional<std::string> second_opinion_for_;  // the worker whose 500 awaits a verdict
    // Declared after tenant_, which its queue entry points to.
    std::unique_ptr<BackendRegistry::Place> place_;  // while queued
    TimePoint queued_at_;
    std::optional<Lease> lease_;  // while attempting
    Attempt at_;
    bool reused_ = false;  // at_.conn came from the idle pool
    bool fresh_tried_ = false;
    TimePoint head_deadline_;
    TimePoint last_piece_;
    TimePoint backoff_until_;
};

// The Run while the server's event loop holds its request.
class Relay::Waiting final : public Deferred {
  public:
    explicit Waiting(std::shared_ptr<Run> run) : run_(std::move(run)) {}
    int wait_fd() const override { return run_->wait_fd(); }
    TimePoint deadline() const override { return run_->deadline(); }
    Step resume(Exchange& exchange) override {
        const auto step = run_->step(exchange);
        if (step == Step::done) {
            report();
        }
        return step;
    }
    // The server cuts the client's connection right after.
    void cancel() override {
        run_->stop(false);
        report();
    }

  private:
    void report() {
        if (!run_->result().handed_off && run_->sink()) {
            run_->sink()(run_->result());
        }
    }
    std::shared_ptr<Run> run_;
};

RelayOutcome Relay::forward(Exchange& exchange, const std::string& target,
                            const std::string& request_id, const std::set<std::string>& avoid,
                            const OutcomeSink& sink) {
    auto run = std::make_shared<Run>(*this, exchange, target, request_id, avoid, sink);
    auto step = run->step(exchange);
    if (step == Deferred::Step::wait && sink && exchange.defer(std::make_unique<Waiting>(run))) {
        RelayOutcome pending;
        pending.handed_off = true;  // the Waiting reports the final outcome to the sink
        return pending;
    }
    // An in-process exchange: this thread waits.
    while (step == Deferred::Step::wait) {
        if (wait_watch(exchange.watch(), run->deadline(), run->wait_fd()) == IoStatus::woken) {
            run->stop(exchange.client_gone());
            exchange.abort();
            break;
        }
        step = run->step(exchange);
    }
    return run->result();
}

Deferred::Step Relay::Run::step(Exchange& exchange) {
    exchange_ = &exchange;
    auto flow = Flow::next;
    while (flow == Flow::next) {
        switch (phase_) {
            case Phase::start:
                flow = start();
                break;
            case Phase::want_slot:
                flow = want_slot();
                break;
            case Phase::queued:
                flow = queued();
                break;
            case Phase::head:
                flow = head();
                break;
            case Phase::body:
                flow = body();
                break;
            case Phase::backoff:
                flow = backoff();
                break;
            case Phase::done:
                throw std::logic_error("Relay::Run::step after the request was answered");
        }
    }
    return flow == Flow::wait ? Deferred::Step::wait : Deferred::Step::done;
}

int Relay::Run::wait_fd() const {
    switch (phase_) {
        case Phase::queued:
            return place_->fd();
        case Phase::head:
        case Phase::body:
            return at_.conn.fd();
        default:
            return -1;
    }
}

TimePoint Relay::Run::deadline() const {
    TimePoint at = TimePoint::max();
    switch (phase_) {
        case Phase::queued:
            at = plan_->slot_deadline();
            break;
        case Phase::head:
            at = head_deadline_;
            break;
        case Phase::body:
            at = std::min(plan_->deadlines().total,
                          last_piece_ + from_seconds(relay_.config_.stream_idle_timeout));
            break;
        case Phase::backoff:
            at = backoff_until_;
            break;
        default:
            return at;
    }
    // The plan's times are on the registry's clock; whoever waits uses the steady one.
    return Clock::now() + std::max(Duration::zero(), at - now());
}

void Relay::Run::stop(bool client_left) {
    if (phase_ == Phase::done) {
        return;
    }
    if (phase_ == Phase::head || phase_ == Phase::body) {
        // Closing the worker connection cancels the generation; nobody learnt anything.
        relay_.registry_.report_abandoned(lease_->backend().id);
    }
    at_ = Attempt();
    lease_.reset();
    place_.reset();
    outcome_.client_gone = client_left;
    result_ = outcome_;
    phase_ = Phase::done;
}

Relay::Run::Flow Relay::Run::finish(RelayOutcome outcome) {
    result_ = std::move(outcome);
    phase_ = Phase::done;
    return Flow::done;
}

Relay::Run::Flow Relay::Run::start() {
    const auto deadlines = make_deadlines();
    if (refused_early(deadlines)) {
        return finish(outcome_);
    }
    plan_ = std::make_unique<RelayPlan>(relay_.rules_, deadlines, relay_.budget_, relay_.random_);
    affinity_ = relay_.affinity_key_for(request());
    phase_ = Phase::want_slot;
    return Flow::next;
}

Relay::Run::Flow Relay::Run::want_slot() {
    queued_at_ = now();
    auto acquired = light_ ? relay_.registry_.try_acquire_light(tried_, place_)
                           : relay_.registry_.try_acquire(tried_, affinity_, tenant_, place_);
    if (place_) {
        phase_ = Phase::queued;
        return Flow::next;  // it may have been served at once
    }
    return on_slot(std::move(acquired));
}

Relay::Run::Flow Relay::Run::queued() {
    auto acquired = place_->take();
    if (!acquired) {
        if (exchange_->client_gone()) {
            acquired.emplace().status = BackendRegistry::AcquireStatus::cancelled;
        } else if (now() >= plan_->slot_deadline()) {
            acquired.emplace().status = BackendRegistry::AcquireStatus::timeout;
        } else {
            return Flow::wait;
        }
    }
    place_.reset();  // leaves the queue, unless it was served
    return on_slot(std::move(*acquired));
}

Relay::Run::Flow Relay::Run::on_slot(BackendRegistry::AcquireResult acquired) {
    const auto waited = to_seconds(now() - queued_at_);
    outcome_.queue_seconds += waited;
    relay_.metrics_.queue_wait(relay_.group_, waited);
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
        acquired.lease.reset();  // the slot is free before the client hears why
        return finish(answer());
    }
    lease_.emplace(std::move(*acquired.lease));
    Backend& backend = lease_->backend();
    outcome_.attempts = plan_->attempts();
    outcome_.worker = backend.id;
    tried_.insert(backend.id);
    fresh_tried_ = false;
    return send(false);
}

// Connects and sends the request; the reply is waited for in head(). A pooled connection may
// have been closed by the worker's keep-alive timer just as we sent on it; that costs nothing
// to retry on a fresh connection, once (`fresh`).
Relay::Run::Flow Relay::Run::send(bool fresh) {
    const auto& config = relay_.config_;
    Backend& backend = lease_->backend();
    at_ = Attempt();
    at_.conn = backend.pool.take(now(), now() + from_seconds(config.connect_timeout), reused_,
                                 at_.error, !fresh);
    if (!at_.conn.connected()) {
        at_.connected = false;
        at_.io = IoStatus::error;
        at_.error = "connect: " + at_.error;
        return decide();
    }
    head_deadline_ =
        std::min(plan_->deadlines().total, now() + from_seconds(config.response_timeout));
    const auto headers = upstream_request_headers(request(), request_id_, backend.api_key,
                                                  exchange_->remote_address());
    // A request body the worker does not take at once is the one write that may wait here.
    at_.io = at_.conn.send_request(request().method, target_,
                                   host_header_for(backend.pool.host(), backend.pool.port()),
                                   headers, request().body, head_deadline_, exchange_->watch());
    if (at_.io == IoStatus::peer_gone || at_.io == IoStatus::woken) {
        return abandon(at_.io == IoStatus::peer_gone);
    }
    if (at_.io != IoStatus::ok) {
        if (reused_ && !fresh && (at_.io == IoStatus::eof || at_.io == IoStatus::error)) {
            fresh_tried_ = true;
            return send(true);
        }
        return decide();
    }
    phase_ = Phase::head;
    return Flow::wait;  // the reply cannot be there yet
}

Relay::Run::Flow Relay::Run::abandon(bool client_left) {
    relay_.registry_.report_abandoned(lease_->backend().id);
    at_ = Attempt();  // closing the worker connection cancels the generation
    lease_.reset();
    return finish(gone(client_left));
}

Relay::Run::Flow Relay::Run::head() {
    if (exchange_->client_gone()) {
        return abandon(true);
    }
    at_.io = at_.conn.read_head_now(at_.head, request().method == "HEAD", at_.error);
    if (at_.io == IoStatus::timeout) {
        if (now() < head_deadline_) {
            at_.error.clear();
            return Flow::wait;
        }
        return decide();  // `error` says whether any of the head had come
    }
    const bool stale_reuse = reused_ && !fresh_tried_ &&
                             (at_.io == IoStatus::eof || at_.io == IoStatus::error) &&
                             at_.error != "incomplete response head";
    if (stale_reuse) {
        fresh_tried_ = true;
        return send(true);
    }
    if (at_.io != IoStatus::ok) {
        return decide();
    }
    const auto content_type = at_.head.headers.get("Content-Type").value_or("");
    const auto framing = response_framing(at_.head, request().method == "HEAD");
    if (framing.framing.kind == BodyFraming::Kind::length ||
        framing.framing.kind == BodyFraming::Kind::none) {
        at_.length = framing.framing.length;
    }
    at_.event_stream = content_type.rfind("text/event-stream", 0) == 0;
    at_.events = at_.event_stream && !at_.length;
    const bool buffer_whole = !at_.events && !(at_.length && *at_.length > kMaxBufferedReply);
    if (plan_->retries_status(at_.head.status) || !(at_.events || buffer_whole)) {
        return decide();  // a retried status is drained in account()
    }
    phase_ = Phase::body;
    last_piece_ = now();
    return read_body(false);  // some of the body may have come with the head
}

// Reads the start of the body before anything reaches the client: a failure until then is
// retried like one before the head. An event stream is read up to its first whole event; any
// other body whole, when it is not too big.
Relay::Run::Flow Relay::Run::body() {
    if (exchange_->client_gone()) {
        return abandon(true);
    }
    return read_body(true);
}

// body() without the look at the client, which head() took a moment ago. `woken`: the socket
// was reported readable, so the first read tries it even if the last one emptied it.
Relay::Run::Flow Relay::Run::read_body(bool woken) {
    Backend& backend = lease_->backend();
    for (bool first = woken;; first = false) {
        std::string piece;
        at_.io = first ? at_.conn.read_body_now(piece, at_.done, at_.error)
                       : at_.conn.read_body_more(piece, at_.done, at_.error);
        if (at_.io == IoStatus::timeout) {
            if (now() < std::min(plan_->deadlines().total,
                                 last_piece_ + from_seconds(relay_.config_.stream_idle_timeout))) {
                at_.error.clear();
                return Flow::wait;
            }
            return decide();
        }
        if (at_.io != IoStatus::ok) {
            if (at_.error.empty()) {
                at_.error = "response cut off";
            }
            return decide();
        }
        last_piece_ = now();
        backend.received.fetch_add(piece.size(), std::memory_order_relaxed);
        if (at_.events) {
            at_.framer.feed(piece);
            at_.bytes = at_.framer.take();
            if (at_.done) {
                at_.bytes += at_.framer.pending();
            }
            if (!at_.bytes.empty() || at_.done) {
                return decide();
            }
        } else {
            at_.bytes += piece;
            if (at_.done || at_.bytes.size() > kMaxBufferedReply) {
                return decide();
            }
        }
    }
}

Relay::Run::Flow Relay::Run::decide() {
    Backend& backend = lease_->backend();
    const auto decision = plan_->on_attempt(report_for(body_is_json_), now());
    account(decision, backend);
    switch (decision.next) {
        case Next::commit:
            return finish(commit(decision));
        case Next::give_up:
            at_ = Attempt();
            lease_.reset();  // the slot is free before the client hears why
            return finish(answer());
        case Next::second_opinion:
        case Next::retry:
            outcome_.retry_reasons.push_back(*decision.retry);
            relay_.metrics_.retry(to_string(*decision.retry));
            break;
        case Next::attempt:
            throw std::logic_error("RelayPlan::on_attempt answered attempt");
    }
    at_ = Attempt();
    lease_.reset();  // free the slot while we back off
    if (decision.next == Next::retry) {
        backoff_until_ = now() + decision.delay;
        phase_ = Phase::backoff;
    } else {
        phase_ = Phase::want_slot;
    }
    return Flow::next;
}

// Waits before the next attempt, or until the client leaves.
Relay::Run::Flow Relay::Run::backoff() {
    if (exchange_->client_gone()) {
        return finish(gone(true));
    }
    if (now() < backoff_until_) {
        return Flow::wait;
    }
    plan_->on_backoff_over();
    phase_ = Phase::want_slot;
    return Flow::next;
}

RelayDeadlines Relay::Run::make_deadlines() const {
    RelayDeadlines d;
    d.started = now();
    d.total = d.started + from_seconds(relay_.config_.total_timeout);
    d.queue = d.started + from_seconds(relay_.config_.queue_timeout);
    if (const auto own = client_deadline(request().headers)) {
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
    respond_error(*exchange_, 503, message, request_id_, retry_after);
}

// Refuses now what cannot start in time, instead of after the client gave up. Only the
// waiters the fair queue serves first count: another tenant's flood does not.
bool Relay::Run::refused_early(const RelayDeadlines& deadlines) {
    const auto own = client_deadline(request().headers);
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

AttemptReport Relay::Run::report_for(std::optional<bool>& body_is_json) const {
    AttemptReport report;
    report.io = at_.io;
    report.connected = at_.connected;
    report.status = at_.head.status;
    report.whole_reply = at_.done && !at_.events;
    if (at_.io != IoStatus::ok || at_.head.status >= 500) {
        // Only a failed attempt asks the retry budget; the count takes the registry's lock.
        report.pool_slots = relay_.registry_.configured_capacity();
    }
    if (at_.io == IoStatus::ok && at_.head.status == 500) {
        if (!body_is_json) {
            body_is_json = request().body.empty() || nlohmann::json::accept(request().body);
        }
        report.request_is_json = *body_is_json;
        report.blames_request = report.whole_reply && report.request_is_json &&
                                classify_worker_500(at_.bytes) == Worker500::request_mistake;
    }
    return report;
}

// What an attempt's decision means for the worker, the metrics and the log.
void Relay::Run::account(const Decision& d, Backend& backend) {
    auto& registry = relay_.registry_;
    if (at_.io != IoStatus::ok) {
        last_error_ =
            fmt::format("worker {}: {} ({})", backend.id,
                        at_.error.empty() ? to_string(at_.io) : at_.error, to_string(at_.io));
        // Nothing listens there: mark it down before reporting the failure, since the report
        // hands free slots to waiting requests and a dead worker has free slots.
        if (at_.error.find("Connection refused") != std::string::npos) {
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
        first_500_ = KeptReply{at_.head.status, at_.head.headers, at_.bytes};
        backend.pool.give_back(std::move(at_.conn), now());
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
               at_.conn.read_body(discard, done, drain_deadline, at_.error) == IoStatus::ok) {
        }
        if (done) {
            backend.pool.give_back(std::move(at_.conn), now());
        }
        last_error_ = fmt::format("worker {} answered {}", backend.id, at_.head.status);
        registry.report(backend.id, false);
        relay_.metrics_.upstream(relay_.group_, backend.id, to_string(d.outcome));
        relay_.log_.warn(kComponent, "upstream_retryable_status",
                         {{"request_id", request_id_},
                          {"worker", backend.id},
                          {"attempt", plan_->attempts()},
                          {"status", at_.head.status}});
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

RelayOutcome Relay::Run::commit(const Decision& d) {
    outcome_.status = at_.head.status;
    outcome_.retry_refused = plan_->retry_refused();
    auto length = at_.length;
    if (at_.done && !length && !at_.events) {
        length = at_.bytes.size();  // a stream stays chunked, as the worker sent it
    }
    const auto head = client_response_headers(at_.head.headers, request_id_);
    auto body = std::make_shared<ReplyBody>(
        relay_,
        ReplyBody::Start{std::move(*lease_), std::move(at_.conn), at_.events, at_.event_stream,
                         std::move(at_.framer), d.blame, d.outcome, plan_->deadlines().total,
                         request_id_},
        std::move(outcome_));
    lease_.reset();  // moved into the body
    std::string first;
    body->on_piece(at_.bytes, at_.done, first, true);  // a whole body frees the worker at once
    if (!exchange_->begin(at_.head.status, head, length)) {
        body->client_gone();
        return body->outcome();
    }
    body->outcome().first_byte_seconds = to_seconds(now() - plan_->deadlines().started);
    if (!first.empty() && !exchange_->write(first)) {
        body->client_gone();
        exchange_->abort();
        return body->outcome();
    }
    if (!body->released() && sink_ && hand_off(body)) {
        RelayOutcome pending = body->outcome();
        pending.handed_off = true;
        return pending;
    }
    return relay_body_blocking(*exchange_, *body);
}

// Hands the rest of a streamed body to the server's event loop, so that no thread waits for
// the worker between two tokens. False when the exchange cannot take it (an in-process one).
bool Relay::Run::hand_off(const std::shared_ptr<ReplyBody>& body) {
    body->keep_connection();  // the event loop watches its fd until the pump is gone
    auto pump = std::make_unique<RelayPump>(body, sink_);
    auto* const taken = pump.get();
    if (!exchange_->hand_off(std::move(pump))) {
        return false;  // the refused pump is gone without a word; the body is still ours
    }
    // Safe: the server calls the pump only after this handler has returned.
    taken->taken(std::move(plan_));
    return true;
}

RelayOutcome Relay::Run::gone(bool client_left) {
    outcome_.client_gone = client_left;
    exchange_->abort();
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
            exchange_->respond(first_500_->status,
                               client_response_headers(first_500_->headers, request_id_),
                               std::move(first_500_->body));
            return outcome_;
        case Answer::upstream_error:
            break;
    }
    outcome_.status = plan_->final_status();
    respond_error(*exchange_, outcome_.status, last_error_, request_id_,
                  relay_.service_rate_.retry_after_seconds(relay_.registry_.waiting(), now()));
    return outcome_;
}

}  // namespace llama_pool
