#pragma once

#include <string_view>

#include "common/socket.hpp"

namespace llama_pool {

// The reasons the relay reports, as enums with one spelling each: metric labels and log
// fields come from to_string() here and never from message text, so rewording a message
// cannot change a metric, and one failure has one name in every label.

// How an attempt failed before the client got anything.
enum class AttemptFailure {
    connect_error,  // no connection to the worker
    timeout,        // connected, but no (complete) answer in time
    reset,          // connected, then closed or reset by the worker
};
// `connected`: whether the connection to the worker was made before `io` went wrong.
AttemptFailure classify_attempt_failure(IoStatus io, bool connected);

// How one attempt on a worker ended: the `outcome` label of the per-worker requests metric.
enum class AttemptOutcome {
    ok,
    status_5xx,          // passed on to the client
    status_5xx_retried,  // tried again on another worker
    connect_error,
    timeout,
    reset,
    broke_mid_response,  // failed after the response had started
};
AttemptOutcome to_outcome(AttemptFailure failure);
std::string_view to_string(AttemptOutcome outcome);

// Why a request was tried on another worker: the `reason` label of the retries metric.
enum class RetryReason {
    connect_error,
    timeout,
    reset,
    status_500,
    status_502,
    status_503,
    status_504
};
RetryReason to_retry_reason(AttemptFailure failure);
// For a retryable status (500 for a second opinion, 502, 503, 504).
RetryReason retry_reason_for_status(int status);
std::string_view to_string(RetryReason reason);

// Why the pool answered a request itself instead of relaying it: the `reason` label of the
// rejected-requests metric and the access log's `rejected`.
enum class RejectReason {
    none,
    auth,                     // no valid API key
    rate_limit,               // the client's token bucket was empty
    queue_full,               // queue_max requests were already waiting
    queue_timeout,            // no slot within queue_timeout
    deadline,                 // no slot within the client's (or the total) deadline
    idempotency_key_invalid,  // an empty or oversized Idempotency-Key
    idempotency_conflict,     // the key was used with another body
};
std::string_view to_string(RejectReason reason);

// What became of a worker's 500: the `result` label of the second-opinions metric.
enum class SecondOpinion {
    skipped,           // the 500 came from reading the request: passed on, nobody blamed
    served_elsewhere,  // another worker served it: the first worker was at fault
    failed_elsewhere,  // another worker said 500 too: the request was at fault
    no_worker_free,    // no other worker in time: the client got the first 500
};
std::string_view to_string(SecondOpinion result);

}  // namespace llama_pool
