#include "proxy/relay_plan.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

namespace llama_pool {

namespace {

bool retryable_status(int status) {
    return status == 502 || status == 503 || status == 504;
}

}  // namespace

std::string_view to_string(RelayState state) {
    switch (state) {
        case RelayState::queued:
            return "queued";
        case RelayState::attempting:
            return "attempting";
        case RelayState::backing_off:
            return "backing_off";
        case RelayState::committed:
            return "committed";
        case RelayState::ended:
            return "ended";
    }
    return "unknown";
}

std::string_view to_string(Next next) {
    switch (next) {
        case Next::attempt:
            return "attempt";
        case Next::commit:
            return "commit";
        case Next::retry:
            return "retry";
        case Next::second_opinion:
            return "second_opinion";
        case Next::give_up:
            return "give_up";
    }
    return "unknown";
}

std::string_view to_string(RetryRefusal refusal) {
    switch (refusal) {
        case RetryRefusal::none:
            return "";
        case RetryRefusal::attempts:
            return "attempts";
        case RetryRefusal::deadline:
            return "deadline";
        case RetryRefusal::budget:
            return "budget";
    }
    return "";
}

std::string_view to_string(Answer answer) {
    switch (answer) {
        case Answer::client_gone:
            return "client_gone";
        case Answer::queue_full:
            return "queue_full";
        case Answer::deadline:
            return "deadline";
        case Answer::queue_timeout:
            return "queue_timeout";
        case Answer::first_500:
            return "first_500";
        case Answer::upstream_error:
            return "upstream_error";
    }
    return "unknown";
}

RelayPlan::RelayPlan(const RelayRules& rules, const RelayDeadlines& deadlines, RetryBudget& budget,
                     RandomSource& random)
    : rules_(rules),
      deadlines_(deadlines),
      budget_(budget),
      random_(random),
      backoff_(rules.backoff_base, rules.backoff_cap) {
    budget_.request_started();
}

RelayPlan::~RelayPlan() {
    if (holding_retry_) {
        budget_.retry_finished();
    }
    budget_.request_finished();
}

void RelayPlan::expect(RelayState state, std::string_view call) const {
    if (state_ != state) {
        throw std::logic_error(fmt::format("RelayPlan::{} in state {} (needs {})", call,
                                           to_string(state_), to_string(state)));
    }
}

TimePoint RelayPlan::slot_deadline() const {
    auto deadline = std::min(deadlines_.queue, deadlines_.total);
    if (second_opinion_since_) {
        deadline = std::min(deadline, *second_opinion_since_ + rules_.second_opinion_wait);
    }
    return deadline;
}

Next RelayPlan::on_slot(SlotResult result, bool same_worker_as_500) {
    expect(RelayState::queued, "on_slot");
    switch (result) {
        case SlotResult::cancelled:
            state_ = RelayState::ended;
            answer_ = Answer::client_gone;
            return Next::give_up;
        case SlotResult::queue_full:
            state_ = RelayState::ended;
            answer_ = Answer::queue_full;
            return Next::give_up;
        case SlotResult::granted:
            if (!same_worker_as_500) {
                state_ = RelayState::attempting;
                ++attempts_;
                return Next::attempt;
            }
            break;  // only the worker that answered 500 had a slot: asking again proves nothing
        case SlotResult::no_slot:
            break;
    }
    state_ = RelayState::ended;
    if (attempts_ == 0) {
        const bool deadline_first = deadlines_.queue > deadlines_.total || deadlines_.client_set;
        answer_ = deadline_first ? Answer::deadline : Answer::queue_timeout;
    } else {
        answer_ = kept_500_ ? Answer::first_500 : Answer::upstream_error;
    }
    return Next::give_up;
}

bool RelayPlan::may_retry(TimePoint now, int pool_slots) {
    if (attempts_ >= rules_.max_attempts) {
        refused_ = RetryRefusal::attempts;
        return false;
    }
    if (now >= deadlines_.total) {
        refused_ = RetryRefusal::deadline;
        return false;
    }
    if (!holding_retry_) {
        if (!budget_.try_start_retry(pool_slots)) {
            refused_ = RetryRefusal::budget;
            return false;
        }
        holding_retry_ = true;  // held until the plan ends, however many retries follow
    }
    return true;
}

Decision RelayPlan::give_up(Decision d) {
    d.next = Next::give_up;
    state_ = RelayState::ended;
    answer_ = kept_500_ ? Answer::first_500 : Answer::upstream_error;
    return d;
}

Decision RelayPlan::commit(const AttemptReport& report, Blame blame, TimePoint now) {
    Decision d;
    d.next = Next::commit;
    d.blame = blame;
    d.outcome = report.status >= 500 ? AttemptOutcome::status_5xx : AttemptOutcome::ok;
    if (second_opinion_since_) {
        // Served elsewhere: the earlier 500 was that worker's fault; a 500 here too, the
        // request's.
        d.second_opinion = report.status == 500 ? SecondOpinion::failed_elsewhere
                                                : SecondOpinion::served_elsewhere;
        d.earlier_worker_fault = report.status != 500;
        d.second_opinion_took = now - *second_opinion_since_;
        second_opinion_since_.reset();
        kept_500_ = false;
    }
    state_ = RelayState::committed;
    return d;
}

bool RelayPlan::retries_status(int status) const {
    return retryable_status(status) && attempts_ < rules_.max_attempts;
}

Decision RelayPlan::on_attempt(const AttemptReport& report, TimePoint now) {
    expect(RelayState::attempting, "on_attempt");
    if (report.io != IoStatus::ok) {
        const auto failure = classify_attempt_failure(report.io, report.connected);
        last_status_ = report.io == IoStatus::timeout ? 504 : 502;
        Decision d;
        d.blame = Blame::worker_fault;
        d.outcome = to_outcome(failure);
        if (!may_retry(now, report.pool_slots)) {
            return give_up(d);
        }
        d.next = Next::retry;
        d.retry = to_retry_reason(failure);
        d.delay =
            std::min<Duration>(backoff_.delay(attempts_ - 1, random_), deadlines_.total - now);
        state_ = RelayState::backing_off;
        return d;
    }
    if (retries_status(report.status)) {
        last_status_ = report.status;
        Decision d;
        d.blame = Blame::worker_fault;
        d.outcome = AttemptOutcome::status_5xx_retried;
        if (!may_retry(now, report.pool_slots)) {
            return give_up(d);
        }
        d.next = Next::retry;
        d.retry = retry_reason_for_status(report.status);
        d.delay =
            std::min<Duration>(backoff_.delay(attempts_ - 1, random_), deadlines_.total - now);
        state_ = RelayState::backing_off;
        return d;
    }
    if (report.status == 500 && !second_opinion_since_ && report.request_is_json &&
        report.whole_reply) {
        if (report.blames_request) {
            auto d = commit(report, Blame::worker_ok, now);
            d.second_opinion = SecondOpinion::skipped;
            return d;
        }
        if (may_retry(now, report.pool_slots)) {
            // Another worker is asked at once: backing off helps a worker recover, and the
            // one that answered 500 is not asked again.
            Decision d;
            d.next = Next::second_opinion;
            d.blame = Blame::deferred;
            d.outcome = AttemptOutcome::status_5xx_retried;
            d.retry = RetryReason::status_500;
            kept_500_ = true;
            second_opinion_since_ = now;
            state_ = RelayState::queued;
            return d;
        }
        return commit(report, Blame::worker_fault, now);
    }
    // A 5xx counts against the worker even when it is passed through, unless it is the
    // request's own 500.
    const bool request_500 =
        report.status == 500 && (second_opinion_since_ || !report.request_is_json ||
                                 (report.whole_reply && report.blames_request));
    return commit(
        report, report.status >= 500 && !request_500 ? Blame::worker_fault : Blame::worker_ok, now);
}

void RelayPlan::on_backoff_over() {
    expect(RelayState::backing_off, "on_backoff_over");
    state_ = RelayState::queued;
}

Answer RelayPlan::answer() const {
    expect(RelayState::ended, "answer");
    return answer_;
}

int RelayPlan::final_status() const {
    return last_status_ == 504 ? 504 : 503;
}

bool cannot_start_in_time(std::size_t waiting_ahead, Duration expected_wait, Duration own) {
    return waiting_ahead > 0 && expected_wait > own;
}

}  // namespace llama_pool
