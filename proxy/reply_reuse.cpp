#include "proxy/reply_reuse.hpp"

#include <fmt/format.h>
#include <poll.h>

#include "common/credentials.hpp"
#include "common/error_body.hpp"
#include "proxy/recording_exchange.hpp"

namespace llama_pool {

namespace {

constexpr const char* kComponent = "proxy";
// How often a request attached to another checks that its own client is still there.
constexpr auto kAttachedCheck = milliseconds(20);

// The credential the client presented, or empty. With auth on it is the checked API key;
// with auth off it may still matter (an unmanaged upstream checks it), so it separates
// tenants either way.
std::string credential_of(const Exchange& exchange) {
    const auto key = presented_key(exchange.request().headers);
    return key ? std::string(*key) : std::string();
}

void respond_error(Exchange& exchange, int status, std::string_view message,
                   const std::string& request_id) {
    Headers headers;
    headers.add("Content-Type", "application/json; charset=utf-8");
    headers.add("X-Request-Id", request_id);
    exchange.respond(status, std::move(headers), make_error_body(status, message));
}

// Length-prefixed group, then who: no choice of bytes makes one group's entry another's.
std::string group_scoped(std::string_view group, std::string_view who) {
    return std::to_string(group.size()) + ":" + std::string(group) + std::to_string(who.size()) +
           ":" + std::string(who);
}

Headers one_header(std::string name, std::string value) {
    Headers h;
    h.add(std::move(name), std::move(value));
    return h;
}

// Finishes a lead ticket exactly once, with "no reply" if the leader's code threw.
class LeadScope {
  public:
    LeadScope(Coalescer& coalescer, std::string scope, Coalescer::Ticket ticket)
        : coalescer_(coalescer), scope_(std::move(scope)), ticket_(std::move(ticket)) {}
    ~LeadScope() {
        if (!finished_) {
            coalescer_.finish(scope_, ticket_, nullptr, false);
        }
    }
    LeadScope(const LeadScope&) = delete;
    LeadScope& operator=(const LeadScope&) = delete;

    void finish(std::shared_ptr<const StoredReply> reply, bool keep) {
        finished_ = true;
        coalescer_.finish(scope_, ticket_, std::move(reply), keep);
    }

  private:
    Coalescer& coalescer_;
    std::string scope_;
    Coalescer::Ticket ticket_;
    bool finished_ = false;
};

}  // namespace

ReplyReuse::ReplyReuse(const PoolConfig& config, Logger& log, PoolMetrics& metrics,
                       const TimeSource& time)
    : config_(config), log_(log), metrics_(metrics) {
    if (config.cache_enabled) {
        cache_ = std::make_unique<ResponseCache>(
            ResponseCacheLimits{static_cast<std::size_t>(config.cache_max_bytes),
                                from_seconds(config.cache_ttl)},
            time);
    }
    if (config.idempotency_window > 0) {
        coalescer_ = std::make_unique<Coalescer>(
            CoalescerLimits{from_seconds(config.idempotency_window),
                            static_cast<std::size_t>(config.idempotency_max_bytes)},
            time);
    }
}

ReuseSnapshot ReplyReuse::snapshot() {
    ReuseSnapshot s;
    if (cache_) {
        const auto c = cache_->stats();
        s.cache_entries = c.entries;
        s.cache_bytes = c.bytes;
        s.cache_evicted = c.evicted;
        s.cache_expired = c.expired;
    }
    if (coalescer_) {
        const auto c = coalescer_->stats();
        s.idempotency_in_flight = c.in_flight;
        s.idempotency_completed = c.completed;
        s.idempotency_bytes = c.bytes;
    }
    return s;
}

RelayOutcome ReplyReuse::forward(Exchange& exchange, const std::string& target,
                                 const std::string& request_id, Relay& relay,
                                 const OutcomeSink& sink) {
    const auto& request = exchange.request();
    const bool keyed = coalescer_ && request.headers.has("Idempotency-Key");
    if (!cache_ && !keyed) {
        return relay.forward(exchange, target, request_id, {}, sink);
    }
    const auto traits = read_request_traits(request, target);
    if (keyed && traits.coalescable()) {
        return coalesce(exchange, target, request_id, traits, relay);
    }
    if (cache_ && traits.cacheable()) {
        return serve_fresh(exchange, target, request_id, traits, false, {}, relay);
    }
    return relay.forward(exchange, target, request_id, {}, sink);
}

RelayOutcome ReplyReuse::coalesce(Exchange& exchange, const std::string& target,
                                  const std::string& request_id, const RequestTraits& traits,
                                  Relay& relay) {
    RelayOutcome outcome;
    const auto& key = *traits.idempotency_key;
    if (key.empty() || key.size() > kMaxIdempotencyKeyBytes ||
        exchange.request().headers.count("Idempotency-Key") > 1) {
        respond_error(exchange, 400,
                      fmt::format("Idempotency-Key must be one value of 1 to {} characters",
                                  kMaxIdempotencyKeyBytes),
                      request_id);
        outcome.status = 400;
        outcome.rejected = RejectReason::idempotency_key_invalid;
        return outcome;
    }
    // Keys are the client's own names: scoped to its credential, or to its address when it
    // has none, so that two clients choosing the same key never meet.
    const auto credential = credential_of(exchange);
    const auto who = credential.empty() ? "addr:" + exchange.remote_address() : "key:" + credential;
    const auto scope = group_scoped(relay.group(), who) + key;

    const auto started = Clock::now();
    auto deadline = started + from_seconds(config_.total_timeout);
    if (const auto own = client_deadline(exchange.request().headers)) {
        deadline = std::min(deadline, started + *own);
    }
    const auto wake_fd = exchange.watch().wake_fd;
    const auto stop = [&] {
        if (exchange.client_gone()) {
            return true;
        }
        pollfd p{wake_fd, POLLIN, 0};
        return wake_fd >= 0 && ::poll(&p, 1, 0) > 0;
    };
    const Headers replayed = one_header("Idempotent-Replayed", "true");
    while (true) {
        auto ticket = coalescer_->join(scope, traits.fingerprint, request_id);
        switch (ticket.role) {
            case Coalescer::Role::conflict:
                metrics_.idempotent_request("conflict");
                log_.info(kComponent, "idempotency_conflict", {{"request_id", request_id}});
                // The IETF Idempotency-Key draft's answer: same key, different request.
                respond_error(exchange, 422,
                              "this Idempotency-Key was used with a different request (method, "
                              "path or body); use a new key for a new request",
                              request_id);
                outcome.status = 422;
                outcome.rejected = RejectReason::idempotency_conflict;
                outcome.idempotency = "conflict";
                return outcome;
            case Coalescer::Role::replay:
                metrics_.idempotent_request("replayed");
                log_.info(kComponent, "idempotency_replayed", {{"request_id", request_id}});
                send_stored_reply(exchange, *ticket.reply, request_id, replayed);
                outcome.status = ticket.reply->status;
                outcome.idempotency = "replayed";
                return outcome;
            case Coalescer::Role::attach: {
                log_.info(kComponent, "idempotency_attached",
                          {{"request_id", request_id},
                           {"leader_request_id", ticket.flight->leader_request_id()}});
                const auto waited = ticket.flight->wait(deadline, kAttachedCheck, stop);
                if (waited == Flight::WaitStatus::stopped) {
                    outcome.client_gone = exchange.client_gone();
                    exchange.abort();
                    return outcome;
                }
                if (waited == Flight::WaitStatus::timeout) {
                    respond_error(exchange, 504,
                                  "the request with this Idempotency-Key is still running; "
                                  "retry with the same key to get its reply",
                                  request_id);
                    outcome.status = 504;
                    outcome.rejected = RejectReason::deadline;
                    return outcome;
                }
                const auto reply = ticket.flight->reply();
                if (!reply) {
                    continue;  // the leader got no complete reply: join again
                }
                metrics_.idempotent_request("attached");
                send_stored_reply(exchange, *reply, request_id, replayed);
                outcome.status = reply->status;
                outcome.idempotency = "attached";
                return outcome;
            }
            case Coalescer::Role::lead: {
                LeadScope lead(*coalescer_, scope, ticket);
                metrics_.idempotent_request("executed");
                outcome = serve_fresh(
                    exchange, target, request_id, traits, true,
                    [&](std::shared_ptr<const StoredReply> reply) {
                        // Refusals and worker failures are for the moment:
                        // requests attached now get them, a later retry
                        // gets a fresh attempt.
                        const bool keep = reply && reply->status < 500;
                        lead.finish(std::move(reply), keep);
                    },
                    relay);
                outcome.idempotency = "executed";
                return outcome;
            }
        }
    }
}

RelayOutcome ReplyReuse::serve_fresh(Exchange& exchange, const std::string& target,
                                     const std::string& request_id, const RequestTraits& traits,
                                     bool outlive_client, const ReplyHandler& on_reply,
                                     Relay& relay) {
    const bool cacheable = cache_ && traits.cacheable();
    std::string cache_key;
    std::string cache_result;
    if (cacheable) {
        cache_key = response_cache_key(group_scoped(relay.group(), credential_of(exchange)),
                                       exchange.request().method, target, *traits.canonical_body);
        if (traits.no_cache) {
            cache_result = "bypass";
        } else if (auto hit = cache_->get(cache_key)) {
            metrics_.cache_lookup("hit");
            log_.debug(kComponent, "cache_hit", {{"request_id", request_id}});
            if (on_reply) {
                on_reply(hit->reply);
            }
            Headers extra;
            extra.add("X-Cache", "HIT");
            extra.add("Age", std::to_string(to_millis(hit->age) / 1000));
            send_stored_reply(exchange, *hit->reply, request_id, extra);
            RelayOutcome outcome;
            outcome.status = hit->reply->status;
            outcome.cache = "hit";
            return outcome;
        } else {
            cache_result = "miss";
        }
        metrics_.cache_lookup(cache_result);
    }
    bool delivered = false;
    const auto deliver = [&](std::shared_ptr<const StoredReply> reply) {
        if (delivered) {
            return;
        }
        delivered = true;
        if (reply && cacheable && !traits.no_store) {
            cache_->put(cache_key, reply);
        }
        if (on_reply) {
            on_reply(std::move(reply));
        }
    };
    RecordingExchange::Options options;
    options.outlive_client = outlive_client;
    options.on_complete = deliver;
    if (cacheable) {
        options.max_bytes = static_cast<std::size_t>(config_.cache_max_bytes);
        options.extra_headers.add("X-Cache", cache_result == "bypass" ? "BYPASS" : "MISS");
    }
    if (outlive_client) {
        options.max_bytes =
            std::max(options.max_bytes, static_cast<std::size_t>(config_.idempotency_max_bytes));
    }
    RecordingExchange tee(exchange, std::move(options));
    auto outcome = relay.forward(tee, target, request_id);
    outcome.cache = cache_result;
    // A chunked reply the worker broke off still ended cleanly for the client; it is not
    // one to keep or share.
    if (!delivered) {
        deliver(outcome.upstream_broke ? nullptr : tee.reply());
    }
    if (tee.client_lost()) {
        // The work went on without its client, for a retry with the same key.
        outcome.client_gone = true;
        log_.info(kComponent, "idempotency_leader_client_left", {{"request_id", request_id}});
    }
    return outcome;
}

}  // namespace llama_pool
