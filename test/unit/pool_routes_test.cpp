// Who may use /pool/*: the admin key when one is set; clients on this machine when none is.
#include "proxy/pool_routes.hpp"

#include <catch2/catch.hpp>

#include "common/exchange.hpp"
#include "common/log.hpp"
#include "common/socket.hpp"
#include "proxy/group_set.hpp"
#include "test/support/fakes.hpp"
#include "test/support/test_exchange.hpp"

using namespace llama_pool;

namespace {

// An in-process exchange from a given client address; keeps what was answered.
int status_of(PoolRoutes& routes, const std::string& method, const std::string& path,
              const std::string& remote, Headers headers = {}) {
    HttpRequest request;
    request.method = method;
    request.headers = std::move(headers);
    test::TestExchange ex(std::move(request), remote);
    REQUIRE(routes.handle(ex, path, "rid"));
    return ex.response_status();
}

// A pool of no workers: the routes answer from an empty group.
struct EmptyPool {
    SeededRandom random{1};
    test::FakeTime time;
    Logger log{LogFormat::text, LogLevel::error, [](std::string_view) {}};
    PoolMetrics metrics{"test"};
    PoolConfig config = [] {
        PoolConfig c;
        c.workers = 0;
        return c;
    }();
    GroupSet groups{config, log, random, time, metrics};
};

}  // namespace

TEST_CASE("loopback addresses are told apart from the others", "[security]") {
    for (const auto* a : {"127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"}) {
        CHECK(is_loopback_address(a));
    }
    for (const auto* a : {"192.0.2.7", "10.0.0.1", "::ffff:10.0.0.1", "fd00::2", "0.0.0.0",
                          "128.0.0.1", "unknown", "", "::ffff:", "127.0.0.1x"}) {
        CHECK_FALSE(is_loopback_address(a));
    }
}

TEST_CASE("without an admin key, /pool/* answers only clients on this machine", "[security]") {
    EmptyPool pool;
    PoolRoutes routes(pool.groups, "test", "");
    CHECK(status_of(routes, "GET", "/pool/status", "127.0.0.1") == 200);
    CHECK(status_of(routes, "GET", "/pool/status", "::1") == 200);
    CHECK(status_of(routes, "GET", "/pool/status", "192.0.2.7") == 403);
    CHECK(status_of(routes, "POST", "/pool/restart", "192.0.2.7") == 403);
    CHECK(status_of(routes, "GET", "/pool/workers/0/log", "::ffff:10.1.2.3") == 403);
    // /health stays public (/ is the console's: console_test.cpp).
    CHECK(status_of(routes, "GET", "/health", "192.0.2.7") == 503);  // no worker, but answered
}

TEST_CASE("with an admin key, /pool/* needs it from everywhere", "[security]") {
    EmptyPool pool;
    PoolRoutes routes(pool.groups, "test", "adm");
    Headers good;
    good.add("Authorization", "Bearer adm");
    Headers wrong;
    wrong.add("X-Api-Key", "nope");
    CHECK(status_of(routes, "GET", "/pool/status", "127.0.0.1") == 401);
    CHECK(status_of(routes, "GET", "/pool/status", "127.0.0.1", wrong) == 401);
    CHECK(status_of(routes, "GET", "/pool/status", "127.0.0.1", good) == 200);
    CHECK(status_of(routes, "GET", "/pool/status", "192.0.2.7", good) == 200);
    CHECK(status_of(routes, "GET", "/pool/status", "192.0.2.7") == 401);
}
