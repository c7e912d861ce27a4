#include "proxy/reply_body.hpp"

#include <fmt/format.h>

namespace llama_pool {

ReplyBody::ReplyBody(Relay& relay, Start start, RelayOutcome outcome)
    : relay_(relay),
      lease_(std::move(start.lease)),
      backend_(lease_->shared_backend()),
      worker_(backend_->id),
      conn_(std::move(start.conn)),
      events_(start.events),
      event_stream_(start.event_stream),
      framer_(std::move(start.framer)),
      blame_(start.blame),
      ok_outcome_(start.outcome),
      total_deadline_(start.total_deadline),
      request_id_(std::move(start.request_id)),
      last_piece_(relay.registry_.time().now()),
      outcome_(std::move(outcome)) {}

ReplyBody::~ReplyBody() {
    if (!reported_) {
        relay_.registry_.report_abandoned(worker_);
    }
    if (released()) {
        // Kept only if the worker's reply was whole.
        backend_->pool.give_back(std::move(conn_), relay_.registry_.time().now());
    }
}

void ReplyBody::on_piece(std::string_view piece, bool done, std::string& out, bool prefetched) {
    last_piece_ = relay_.registry_.time().now();
    if (!prefetched) {
        backend_->received.fetch_add(piece.size(), std::memory_order_relaxed);
    }
    const auto before = out.size();
    if (events_ && !prefetched) {
        framer_.feed(piece);
        out += framer_.take();
        if (done) {
            out += framer_.pending();
        }
    } else {
        out += piece;
    }
    usage_.feed(std::string_view(out).substr(before));
    if (done) {
        release_worker();
    }
}

void ReplyBody::release_worker() {
    if (!lease_) {
        return;
    }
    reported_ = true;
    relay_.registry_.report(worker_, blame_ != Blame::worker_fault);
    relay_.metrics_.upstream(relay_.group_, worker_, to_string(ok_outcome_));
    if (!keep_connection_) {
        backend_->pool.give_back(std::move(conn_), relay_.registry_.time().now());
    }
    lease_.reset();
}

TimePoint ReplyBody::idle_deadline() const {
    return std::min(total_deadline_,
                    last_piece_ + from_seconds(relay_.config_.stream_idle_timeout));
}

void ReplyBody::completed() {
    relay_.service_rate_.on_completion(relay_.registry_.time().now());
    if (const auto counts = usage_.finish(events_ || event_stream_); counts.found) {
        relay_.metrics_.tokens(relay_.group_, worker_, counts.predicted, counts.prompt);
        outcome_.tokens_predicted = counts.predicted;
    }
}

std::optional<std::string> ReplyBody::broken(IoStatus io, const std::string& error) {
    outcome_.upstream_broke = true;
    if (!reported_) {
        reported_ = true;
        relay_.registry_.report(worker_, false);
    }
    relay_.metrics_.upstream(relay_.group_, worker_, to_string(AttemptOutcome::broke_mid_response));
    const auto why = error.empty() ? std::string(to_string(io)) : error;
    relay_.log_.warn("proxy", "upstream_broke_mid_response",
                     {{"request_id", request_id_}, {"worker", worker_}, {"error", why}});
    if (!events_) {
        return std::nullopt;
    }
    // A stream ends with what was produced and an error event that says so.
    return sse_error_event(
        io == IoStatus::timeout ? 504 : 502,
        fmt::format("worker {} failed after the stream had started: {}", worker_, why));
}

RelayOutcome relay_body_blocking(Exchange& exchange, ReplyBody& body) {
    bool done = body.released();
    IoStatus io = IoStatus::ok;
    std::string error;
    std::string piece;
    std::string out;
    while (!done) {
        piece.clear();
        io =
            body.connection().read_body(piece, done, body.idle_deadline(), error, exchange.watch());
        if (io != IoStatus::ok) {
            break;
        }
        out.clear();
        body.on_piece(piece, done, out);
        if (!out.empty() && !exchange.write(out)) {
            body.client_gone();
            exchange.abort();
            return body.outcome();
        }
    }
    if (io == IoStatus::peer_gone || io == IoStatus::woken) {
        if (io == IoStatus::peer_gone) {
            body.client_gone();
        }
        exchange.abort();
        return body.outcome();
    }
    body.completed();
    if (io != IoStatus::ok) {
        if (const auto last = body.broken(io, error)) {
            exchange.write(*last);
            exchange.finish();
        } else {
            exchange.abort();
        }
        return body.outcome();
    }
    exchange.finish();
    return body.outcome();
}

}  // namespace llama_pool
