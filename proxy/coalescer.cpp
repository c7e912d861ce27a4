#include "proxy/coalescer.hpp"

#include <algorithm>

namespace llama_pool {

Flight::WaitStatus Flight::wait(TimePoint deadline, Duration poll,
                                const std::function<bool()>& stop) const {
    std::unique_lock lock(mutex_);
    while (!done_) {
        const auto now = Clock::now();
        if (now >= deadline) {
            return WaitStatus::timeout;
        }
        cv_.wait_until(lock, std::min(deadline, now + poll));
        if (!done_ && stop && stop()) {
            return WaitStatus::stopped;
        }
    }
    return WaitStatus::done;
}

std::shared_ptr<const StoredReply> Flight::reply() const {
    std::lock_guard lock(mutex_);
    return reply_;
}

void Flight::finish(std::shared_ptr<const StoredReply> reply) {
    {
        std::lock_guard lock(mutex_);
        done_ = true;
        reply_ = std::move(reply);
    }
    cv_.notify_all();
}

Coalescer::Ticket Coalescer::join(const std::string& scope, std::uint64_t fingerprint,
                                  const std::string& request_id) {
    std::lock_guard lock(mutex_);
    expire_locked(time_.now());
    Ticket ticket;
    const auto found = entries_.find(scope);
    if (found == entries_.end()) {
        ticket.role = Role::lead;
        ticket.flight = std::make_shared<Flight>(request_id);
        Entry entry;
        entry.fingerprint = fingerprint;
        entry.flight = ticket.flight;
        entries_.emplace(scope, std::move(entry));
        return ticket;
    }
    const Entry& entry = found->second;
    if (entry.fingerprint != fingerprint) {
        ticket.role = Role::conflict;
    } else if (entry.flight) {
        ticket.role = Role::attach;
        ticket.flight = entry.flight;
    } else {
        ticket.role = Role::replay;
        ticket.reply = entry.reply;
    }
    return ticket;
}

void Coalescer::finish(const std::string& scope, const Ticket& lead,
                       std::shared_ptr<const StoredReply> reply, bool keep) {
    {
        std::lock_guard lock(mutex_);
        const auto found = entries_.find(scope);
        if (found != entries_.end() && found->second.flight == lead.flight) {
            Entry& entry = found->second;
            const auto bytes = reply ? scope.size() + reply->size() : 0;
            if (reply && keep && bytes <= limits_.max_bytes) {
                entry.flight.reset();
                entry.reply = reply;
                entry.bytes = bytes;
                entry.completed_at = time_.now();
                entry.completed_pos = completed_.insert(completed_.end(), scope);
                bytes_ += bytes;
                while (bytes_ > limits_.max_bytes) {
                    erase_completed_locked(completed_.begin());
                }
            } else {
                entries_.erase(found);
            }
        }
    }
    // After the map changed: a follower told "no reply" must find the key free to lead.
    lead.flight->finish(std::move(reply));
}

void Coalescer::expire_locked(TimePoint now) {
    while (!completed_.empty()) {
        const auto& entry = entries_.at(completed_.front());
        if (now - entry.completed_at < limits_.window) {
            break;
        }
        erase_completed_locked(completed_.begin());
    }
}

void Coalescer::erase_completed_locked(std::list<std::string>::iterator pos) {
    const auto found = entries_.find(*pos);
    bytes_ -= found->second.bytes;
    entries_.erase(found);
    completed_.erase(pos);
}

Coalescer::Stats Coalescer::stats() {
    std::lock_guard lock(mutex_);
    expire_locked(time_.now());
    return {entries_.size() - completed_.size(), completed_.size(), bytes_};
}

}  // namespace llama_pool
