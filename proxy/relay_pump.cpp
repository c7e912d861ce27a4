#include "proxy/relay_pump.hpp"

namespace llama_pool {

RelayPump::~RelayPump() {
    if (!taken_) {
        return;
    }
    auto outcome = body_->outcome();
    body_.reset();  // hands the worker connection back (or closes it) before the log line
    plan_.reset();
    if (sink_) {
        sink_(outcome);
    }
}

BodyPump::Step RelayPump::pull(std::string& out) {
    std::string piece;
    std::string error;
    const auto before = out.size();
    // Everything the socket holds now: the server waits for it to become readable again,
    // so nothing may stay in the connection's buffer.
    for (bool first = true;; first = false) {
        piece.clear();
        bool done = false;
        auto& conn = body_->connection();
        // The first read tries the socket epoll said is readable; later ones stop once a
        // short read emptied it (the server re-arms the source level-triggered).
        const auto io = first ? conn.read_body_now(piece, done, error)
                              : conn.read_body_more(piece, done, error);
        if (io == IoStatus::timeout) {
            return Step::more;  // nothing more for now
        }
        if (io != IoStatus::ok) {
            return broken(io, error, out);
        }
        body_->on_piece(piece, done, out);
        if (done) {
            body_->completed();
            return Step::finished;
        }
        if (out.size() - before >= kPullBytes) {
            return Step::more;  // the server asks again (see BodyPump::kPullBytes)
        }
    }
}

BodyPump::Step RelayPump::on_timeout(std::string& out) {
    return broken(IoStatus::timeout, "the worker sent nothing within stream_idle_timeout", out);
}

BodyPump::Step RelayPump::broken(IoStatus io, const std::string& error, std::string& out) {
    body_->completed();
    if (const auto last = body_->broken(io, error)) {
        out += *last;
        return Step::finished;
    }
    return Step::aborted;
}

}  // namespace llama_pool
