#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "common/backoff.hpp"
#include "common/clock.hpp"
#include "common/random.hpp"
#include "common/socket.hpp"
#include "proxy/relay_reasons.hpp"
#include "proxy/retry_budget.hpp"

namespace llama_pool {

// The relay's decisions for one client request, with no I/O: the relay tells it what each
// step came to, with the time, and carries out the answer. Relay::forward is the shell around
// it; the unit tests drive it on a fake clock with no socket.
//
//   queued ──slot granted──▶ attempting ──commit──▶ committed
//     ▲   ▲                     │
//     │   └──second opinion─────┤
//     └── backing_off ◀──retry──┘
//   queued or attempting ──give up──▶ ended
//
// A call that the current state does not allow throws std::logic_error: the shell has a bug,
// and a test should see it rather than a request that quietly goes wrong.
enum class RelayState { queued, attempting, backing_off, committed, ended };
std::string_view to_string(RelayState state);

struct RelayRules {
    int max_attempts = 2;
    Duration backoff_base = milliseconds(100);
    Duration backoff_cap = seconds(2);
    // How long a second opinion on a worker's 500 may wait for another worker's slot. Past it
    // the client gets the first 500 as it was: on a busy pool the wait would otherwise be a
    // whole generation (22 s measured on BitNet's fork) for an answer most often the same.
    Duration second_opinion_wait = milliseconds(1000);
};

struct RelayDeadlines {
    TimePoint started;
    TimePoint queue;          // for a slot
    TimePoint total;          // for the whole exchange
    bool client_set = false;  // the client's X-Request-Timeout shortened them
};

// What a request for a worker slot came to.
enum class SlotResult { granted, no_slot, queue_full, cancelled };

// What one attempt came to before anything reached the client.
struct AttemptReport {
    IoStatus io = IoStatus::ok;  // not ok: connecting, sending or reading failed
    bool connected = true;       // whether the connection was made before `io` went wrong
    int status = 0;              // the worker's status, when `io` is ok
    // The reply was read whole (not a stream): only such a 500 can get a second opinion.
    bool whole_reply = false;
    // llama-server uses 500 for bad requests too. A body that is not JSON is the client's
    // fault, and so is a 500 whose message comes from reading the request.
    bool request_is_json = true;
    bool blames_request = false;
    // The pool's slot count now: the retry budget's floor (see RetryBudget::try_start_retry).
    // Needed, and so filled in, only for an attempt that failed (an IoStatus or a 5xx).
    int pool_slots = 0;
};

enum class Next {
    attempt,         // a slot was granted: try this worker
    commit,          // pass this worker's reply to the client; no retry after this
    retry,           // give the slot back, wait `delay`, ask for a slot again
    second_opinion,  // keep this 500 aside and ask another worker at once
    give_up,         // answer as answer() says
};
std::string_view to_string(Next next);

// What an attempt says about its worker, for the circuit breaker.
enum class Blame {
    worker_ok,
    worker_fault,
    deferred,  // a second opinion decides
};

struct Decision {
    Next next = Next::give_up;
    Blame blame = Blame::worker_ok;
    // The per-worker metric label for this attempt (for a commit: the label if the body
    // ends well; a body the worker breaks is broke_mid_response and its fault).
    AttemptOutcome outcome = AttemptOutcome::ok;
    std::optional<RetryReason> retry;  // with retry and second_opinion
    Duration delay{};                  // with retry
    // With a commit that settles a second opinion: its result, and whether the worker whose
    // 500 waited for it was at fault.
    std::optional<SecondOpinion> second_opinion;
    bool earlier_worker_fault = false;
    Duration second_opinion_took{};  // from the first 500 to this answer
};

// Why no further attempt was made: the access log's retry_refused.
enum class RetryRefusal { none, attempts, deadline, budget };
std::string_view to_string(RetryRefusal refusal);

// How a request that never committed is answered.
enum class Answer {
    client_gone,     // nobody to answer
    queue_full,      // 503 now
    deadline,        // 503: no slot within the client's (or the total) deadline
    queue_timeout,   // 503: no slot within queue_timeout
    first_500,       // the worker's own 500, kept while a second opinion was sought
    upstream_error,  // 502 or 504 or 503 from what the attempts saw; see final_status()
};
std::string_view to_string(Answer answer);

class RelayPlan {
  public:
    // Counts the request in `budget` for as long as the plan lives.
    RelayPlan(const RelayRules& rules, const RelayDeadlines& deadlines, RetryBudget& budget,
              RandomSource& random);
    ~RelayPlan();
    RelayPlan(const RelayPlan&) = delete;
    RelayPlan& operator=(const RelayPlan&) = delete;

    RelayState state() const { return state_; }
    const RelayDeadlines& deadlines() const { return deadlines_; }
    int attempts() const { return attempts_; }
    RetryRefusal retry_refused() const { return refused_; }
    // Until when a slot may be waited for (queued).
    TimePoint slot_deadline() const;
    // Whether a second opinion is being sought, and since when.
    bool awaiting_second_opinion() const { return second_opinion_since_.has_value(); }
    TimePoint second_opinion_since() const { return second_opinion_since_.value_or(TimePoint{}); }

    // queued → attempting (Next::attempt) or ended (Next::give_up). `same_worker_as_500`: the
    // slot is on the worker whose 500 awaits a second opinion, which proves nothing.
    Next on_slot(SlotResult result, bool same_worker_as_500 = false);
    // Whether a worker's answer with `status` will be tried on another worker (attempting):
    // its body is then not read.
    bool retries_status(int status) const;
    // attempting → committed, backing_off, queued (second opinion) or ended.
    Decision on_attempt(const AttemptReport& report, TimePoint now);
    // backing_off → queued.
    void on_backoff_over();
    // ended: how to answer.
    Answer answer() const;
    // ended with upstream_error: the status the client gets.
    int final_status() const;

  private:
    void expect(RelayState state, std::string_view call) const;
    // Whether one more attempt may follow; records why not.
    bool may_retry(TimePoint now, int pool_slots);
    Decision commit(const AttemptReport& report, Blame blame, TimePoint now);
    Decision give_up(Decision d);

    RelayRules rules_;
    RelayDeadlines deadlines_;
    RetryBudget& budget_;
    RandomSource& random_;
    ExponentialBackoff backoff_;
    RelayState state_ = RelayState::queued;
    int attempts_ = 0;
    bool holding_retry_ = false;
    RetryRefusal refused_ = RetryRefusal::none;
    Answer answer_ = Answer::upstream_error;
    int last_status_ = 503;
    bool kept_500_ = false;
    std::optional<TimePoint> second_opinion_since_;
};

// Whether a request with its own deadline should be refused at once: `waiting_ahead` requests
// come first and the measured service rate says they take `expected_wait`.
bool cannot_start_in_time(std::size_t waiting_ahead, Duration expected_wait, Duration own);

}  // namespace llama_pool
