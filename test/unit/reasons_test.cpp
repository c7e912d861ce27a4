// Reasons are enums with one spelling each (issue 17, item 4): one failure has one name in
// every metric label, and no label comes from message text.

#include <catch2/catch.hpp>
#include <set>
#include <string>

#include "proxy/relay_reasons.hpp"
#include "supervisor/worker_state.hpp"

using namespace llama_pool;

namespace {

template <typename Enum, std::size_t N>
std::set<std::string> names(const Enum (&all)[N]) {
    std::set<std::string> out;
    for (const auto e : all) {
        out.emplace(to_string(e));
    }
    return out;
}

}  // namespace

TEST_CASE("an attempt failure has the same name as an outcome and as a retry reason", "[reasons]") {
    struct Case {
        IoStatus io;
        bool connected;
        const char* name;
    };
    const Case cases[] = {
        {IoStatus::error, false, "connect_error"}, {IoStatus::timeout, false, "connect_error"},
        {IoStatus::timeout, true, "timeout"},      {IoStatus::eof, true, "reset"},
        {IoStatus::error, true, "reset"},
    };
    for (const auto& c : cases) {
        const auto failure = classify_attempt_failure(c.io, c.connected);
        CHECK(to_string(to_outcome(failure)) == c.name);
        CHECK(to_string(to_retry_reason(failure)) == c.name);
    }
}

TEST_CASE("retryable statuses name their own retry reason", "[reasons]") {
    CHECK(to_string(retry_reason_for_status(500)) == "status_500");
    CHECK(to_string(retry_reason_for_status(502)) == "status_502");
    CHECK(to_string(retry_reason_for_status(503)) == "status_503");
    CHECK(to_string(retry_reason_for_status(504)) == "status_504");
}

TEST_CASE("every reason has a name of its own", "[reasons]") {
    const auto failures = names(all_failure_kinds);
    CHECK(failures.size() == std::size(all_failure_kinds));
    CHECK(failures.count("unknown") == 0);
    const AttemptOutcome outcomes[] = {AttemptOutcome::ok,
                                       AttemptOutcome::status_5xx,
                                       AttemptOutcome::status_5xx_retried,
                                       AttemptOutcome::connect_error,
                                       AttemptOutcome::timeout,
                                       AttemptOutcome::reset,
                                       AttemptOutcome::broke_mid_response};
    CHECK(names(outcomes).size() == std::size(outcomes));
    const RetryReason retries[] = {RetryReason::connect_error, RetryReason::timeout,
                                   RetryReason::reset,         RetryReason::status_500,
                                   RetryReason::status_502,    RetryReason::status_503,
                                   RetryReason::status_504};
    CHECK(names(retries).size() == std::size(retries));
    CHECK(names(retries).count("unknown") == 0);
}

TEST_CASE("every rejection reason has its own label", "[reasons]") {
    const RejectReason all[] = {RejectReason::auth,
                                RejectReason::rate_limit,
                                RejectReason::queue_full,
                                RejectReason::queue_timeout,
                                RejectReason::deadline,
                                RejectReason::idempotency_key_invalid,
                                RejectReason::idempotency_conflict};
    const auto labels = names(all);
    CHECK(labels.size() == std::size(all));
    CHECK(labels.count("") == 0);
    CHECK(to_string(RejectReason::none).empty());  // no label: nothing was rejected
    CHECK(to_string(RejectReason::queue_full) == "queue_full");
}
