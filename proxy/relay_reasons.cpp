#include "proxy/relay_reasons.hpp"

namespace llama_pool {

AttemptFailure classify_attempt_failure(IoStatus io, bool connected) {
    if (!connected) {
        return AttemptFailure::connect_error;
    }
    return io == IoStatus::timeout ? AttemptFailure::timeout : AttemptFailure::reset;
}

AttemptOutcome to_outcome(AttemptFailure failure) {
    switch (failure) {
        case AttemptFailure::connect_error:
            return AttemptOutcome::connect_error;
        case AttemptFailure::timeout:
            return AttemptOutcome::timeout;
        case AttemptFailure::reset:
            break;
    }
    return AttemptOutcome::reset;
}

std::string_view to_string(AttemptOutcome outcome) {
    switch (outcome) {
        case AttemptOutcome::ok:
            return "ok";
        case AttemptOutcome::status_5xx:
            return "status_5xx";
        case AttemptOutcome::status_5xx_retried:
            return "status_5xx_retried";
        case AttemptOutcome::connect_error:
            return "connect_error";
        case AttemptOutcome::timeout:
            return "timeout";
        case AttemptOutcome::reset:
            return "reset";
        case AttemptOutcome::broke_mid_response:
            return "broke_mid_response";
    }
    return "unknown";
}

RetryReason to_retry_reason(AttemptFailure failure) {
    switch (failure) {
        case AttemptFailure::connect_error:
            return RetryReason::connect_error;
        case AttemptFailure::timeout:
            return RetryReason::timeout;
        case AttemptFailure::reset:
            break;
    }
    return RetryReason::reset;
}

RetryReason retry_reason_for_status(int status) {
    switch (status) {
        case 500:
            return RetryReason::status_500;
        case 502:
            return RetryReason::status_502;
        case 504:
            return RetryReason::status_504;
        default:
            return RetryReason::status_503;
    }
}

std::string_view to_string(RetryReason reason) {
    switch (reason) {
        case RetryReason::connect_error:
            return "connect_error";
        case RetryReason::timeout:
            return "timeout";
        case RetryReason::reset:
            return "reset";
        case RetryReason::status_500:
            return "status_500";
        case RetryReason::status_502:
            return "status_502";
        case RetryReason::status_503:
            return "status_503";
        case RetryReason::status_504:
            return "status_504";
    }
    return "unknown";
}

std::string_view to_string(RejectReason reason) {
    switch (reason) {
        case RejectReason::none:
            return "";
        case RejectReason::auth:
            return "auth";
        case RejectReason::rate_limit:
            return "rate_limit";
        case RejectReason::queue_full:
            return "queue_full";
        case RejectReason::queue_timeout:
            return "queue_timeout";
        case RejectReason::deadline:
            return "deadline";
        case RejectReason::idempotency_key_invalid:
            return "idempotency_key_invalid";
        case RejectReason::idempotency_conflict:
            return "idempotency_conflict";
    }
    return "";
}

std::string_view to_string(SecondOpinion result) {
    switch (result) {
        case SecondOpinion::skipped:
            return "skipped";
        case SecondOpinion::served_elsewhere:
            return "served_elsewhere";
        case SecondOpinion::failed_elsewhere:
            return "failed_elsewhere";
        case SecondOpinion::no_worker_free:
            return "no_worker_free";
    }
    return "skipped";
}

}  // namespace llama_pool
