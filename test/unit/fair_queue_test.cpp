#include "proxy/fair_queue.hpp"

#include <catch2/catch.hpp>
#include <map>
#include <mutex>
#include <thread>

#include "common/config.hpp"
#include "proxy/backend_registry.hpp"
#include "proxy/tenant_identity.hpp"
#include "test/support/fakes.hpp"
#include "test/support/registry_acquire.hpp"
#include "test/support/test_process.hpp"

using namespace llama_pool;
using namespace std::chrono_literals;

namespace {

TenantTicket tenant(const std::string& name, double weight = 1, int priority = 0, int cap = 0) {
    return {name, name, {weight, priority, cap}};
}

// Serves the queue one slot at a time, as a one-slot pool would: takes the first ticket of
// the order, runs it, finishes it. Returns the tenants in the order they were served.
std::vector<std::string> drain(FairQueue& q, std::map<FairQueue::Ticket, std::string>& owner,
                               TimePoint now, std::size_t n) {
    std::vector<std::string> served;
    while (served.size() < n && !q.empty()) {
        const auto order = q.order(now);
        REQUIRE_FALSE(order.empty());
        const auto t = order.front();
        q.served(t);
        served.push_back(owner.at(t));
        q.finished(owner.at(t));
    }
    return served;
}

}  // namespace

TEST_CASE("a newcomer is served next, not after another tenant's flood", "[fair_queue]") {
    FairQueue q;
    const TimePoint now{};
    std::map<FairQueue::Ticket, std::string> owner;
    // A's first request runs at once (nobody waits); 15 more queue behind it.
    q.started_without_waiting(tenant("A"));
    for (int i = 0; i < 15; ++i) {
        owner[q.push(tenant("A"), now)] = "A";
    }
    owner[q.push(tenant("B"), now + 300ms)] = "B";
    q.finished("A");  // the running request ends: the next slot is B's
    const auto served = drain(q, owner, now + 1s, 2);
    CHECK(served == std::vector<std::string>{"B", "A"});
}

TEST_CASE("within one tenant the order is arrival order", "[fair_queue]") {
    FairQueue q;
    const TimePoint now{};
    const auto t1 = q.push(tenant("A"), now);
    const auto t2 = q.push(tenant("A"), now);
    const auto t3 = q.push(tenant("A"), now);
    CHECK(q.order(now) == std::vector<FairQueue::Ticket>{t1, t2, t3});
}

TEST_CASE("backlogged tenants alternate in proportion to their weights", "[fair_queue]") {
    FairQueue q;
    const TimePoint now{};
    std::map<FairQueue::Ticket, std::string> owner;
    for (int i = 0; i < 30; ++i) {
        owner[q.push(tenant("heavy", 2), now)] = "heavy";
        owner[q.push(tenant("light", 1), now)] = "light";
    }
    const auto served = drain(q, owner, now, 30);
    const auto heavy = std::count(served.begin(), served.end(), "heavy");
    // Weight 2 against 1: two thirds of the first 30 slots, within one either way.
    CHECK(heavy >= 19);
    CHECK(heavy <= 21);
}

TEST_CASE("equal tenants share slots evenly however many each queued", "[fair_queue]") {
    FairQueue q;
    const TimePoint now{};
    std::map<FairQueue::Ticket, std::string> owner;
    for (int i = 0; i < 50; ++i) {
        owner[q.push(tenant("flood"), now)] = "flood";
    }
    for (int i = 0; i < 5; ++i) {
        owner[q.push(tenant("small"), now)] = "small";
    }
    const auto served = drain(q, owner, now, 10);
    CHECK(std::count(served.begin(), served.end(), "small") == 5);
}

TEST_CASE("a higher priority class goes first", "[fair_queue]") {
    FairQueue q(Duration::zero());
    const TimePoint now{};
    std::map<FairQueue::Ticket, std::string> owner;
    owner[q.push(tenant("batch", 1, 0), now)] = "batch";
    owner[q.push(tenant("batch", 1, 0), now)] = "batch";
    owner[q.push(tenant("chat", 1, 5), now + 1s)] = "chat";
    const auto served = drain(q, owner, now + 2s, 3);
    CHECK(served == std::vector<std::string>{"chat", "batch", "batch"});
}

TEST_CASE("ageing lets a low class through a steady high-priority stream", "[fair_queue]") {
    FairQueue q(10s);
    TimePoint now{};
    std::map<FairQueue::Ticket, std::string> owner;
    owner[q.push(tenant("low", 1, 0), now)] = "low";
    bool low_served = false;
    // One high-priority request arrives per second, forever; one is served per second.
    for (int second = 0; second < 60 && !low_served; ++second) {
        owner[q.push(tenant("high", 1, 1), now)] = "high";
        const auto order = q.order(now);
        const auto t = order.front();
        low_served = owner.at(t) == "low";
        q.served(t);
        q.finished(owner.at(t));
        now += 1s;
    }
    CHECK(low_served);
    CHECK(now <= TimePoint{} + 12s);  // after one ageing step (10 s), not never
}

TEST_CASE("a tenant at its concurrency cap is skipped, not allowed to block others",
          "[fair_queue]") {
    FairQueue q;
    const TimePoint now{};
    const auto capped = tenant("capped", 1, 0, 1);
    q.started_without_waiting(capped);
    const auto c2 = q.push(capped, now);
    const auto other = q.push(tenant("other"), now);
    CHECK_FALSE(q.under_cap("capped", capped.policy));
    CHECK(q.order(now) == std::vector<FairQueue::Ticket>{other});
    q.finished("capped");
    CHECK(q.order(now) == std::vector<FairQueue::Ticket>{other, c2});
}

TEST_CASE("a withdrawn request gives its share back", "[fair_queue]") {
    FairQueue q;
    const TimePoint now{};
    std::map<FairQueue::Ticket, std::string> owner;
    q.started_without_waiting(tenant("busy"));
    owner[q.push(tenant("A"), now)] = "A";
    const auto gone = q.push(tenant("B"), now);
    q.withdraw(gone);  // B's client timed out
    owner[q.push(tenant("B"), now)] = "B";
    owner[q.push(tenant("A"), now)] = "A";
    q.finished("busy");
    // B's new request takes the place the withdrawn one had, ahead of A's second.
    CHECK(drain(q, owner, now, 3) == std::vector<std::string>{"A", "B", "A"});
}

TEST_CASE("ahead_of counts only the waiters served before a new request", "[fair_queue]") {
    FairQueue q;
    const TimePoint now{};
    q.started_without_waiting(tenant("flood"));
    for (int i = 0; i < 20; ++i) {
        q.push(tenant("flood"), now);
    }
    CHECK(q.ahead_of(tenant("flood"), now) == 20);
    CHECK(q.ahead_of(tenant("newcomer"), now) <= 1);
}

TEST_CASE("stats show depth, running and oldest wait per tenant", "[fair_queue]") {
    FairQueue q;
    const TimePoint t0{};
    q.started_without_waiting(tenant("A"));
    q.push(tenant("A"), t0);
    q.push(tenant("B"), t0 + 2s);
    const auto stats = q.stats(t0 + 5s);
    REQUIRE(stats.size() == 2);
    CHECK(stats[0].label == "A");
    CHECK(stats[0].waiting == 1);
    CHECK(stats[0].running == 1);
    CHECK(stats[0].oldest_wait == 5s);
    CHECK(stats[1].label == "B");
    CHECK(stats[1].oldest_wait == 3s);
}

TEST_CASE("idle tenants are forgotten: memory stays bounded", "[fair_queue]") {
    FairQueue q;
    for (int i = 0; i < 5000; ++i) {
        const auto t = tenant("client-" + std::to_string(i));
        q.started_without_waiting(t);
        q.finished(t.id);
    }
    CHECK(q.stats(TimePoint{}).empty());
    // A waiting stream of distinct tenants, served one by one.
    std::map<FairQueue::Ticket, std::string> owner;
    q.started_without_waiting(tenant("holder"));
    for (int i = 0; i < 5000; ++i) {
        const auto id = "w-" + std::to_string(i);
        owner[q.push(tenant(id), TimePoint{})] = id;
        drain(q, owner, TimePoint{}, 1);
    }
    CHECK(q.stats(TimePoint{}).size() == 1);  // only the holder, still running
}

TEST_CASE("misuse fails loudly", "[fair_queue]") {
    FairQueue q;
    CHECK_THROWS_AS(q.served(42), std::logic_error);
    CHECK_THROWS_AS(q.withdraw(42), std::logic_error);
    CHECK_THROWS_AS(q.finished("nobody"), std::logic_error);
}

TEST_CASE("tenants are found by key or address, strangers are their own tenant", "[tenants]") {
    const std::vector<TenantConfig> config = {
        {"n8n", {"key-n8n"}, {}, 2, 0, 0},
        {"office", {}, {"10.0.0.7"}, 1, 1, 4},
    };
    Headers with_key;
    with_key.add("Authorization", "Bearer key-n8n");
    Headers other_key;
    other_key.add("Authorization", "Bearer sk-someone");
    const TenantDirectory checked(config, true);
    const auto n8n = checked.identify(with_key, "127.0.0.1");
    CHECK(n8n.label == "n8n");
    CHECK(n8n.policy.weight == 2);
    CHECK(checked.identify({}, "10.0.0.7").label == "office");
    CHECK(checked.identify({}, "10.0.0.7").policy.max_concurrency == 4);
    const auto stranger = checked.identify(other_key, "127.0.0.1");
    CHECK(stranger.label == key_label("sk-someone"));
    CHECK(stranger.label.find("sk-") == std::string::npos);  // never the key itself
    CHECK(stranger.policy == TenantPolicy{});
    CHECK(checked.configured("n8n"));
    CHECK_FALSE(checked.configured(stranger.label));
    // Keys not checked by the pool: an unknown key could be anything, so the address counts.
    const TenantDirectory unchecked(config, false);
    CHECK(unchecked.identify(other_key, "192.0.2.1").label == "192.0.2.1");
    CHECK(unchecked.identify(with_key, "192.0.2.1").label == "n8n");
}

TEST_CASE("the registry hands a freed slot to the newcomer, not to the flood", "[registry]") {
    SeededRandom random(1);
    SteadyTimeSource time;
    BackendRegistry registry(random, time);
    registry.worker_ready({"a", "127.0.0.1", 1, 1, ""});
    const auto flood = tenant("flood");
    auto held = test::acquire(registry, Clock::now() + 1s, {}, {}, 0, flood);
    REQUIRE(held.lease);
    std::vector<std::string> order;
    std::mutex order_mutex;
    std::atomic<bool> stop{false};
    auto waiter = [&](TenantTicket who) {
        auto r = test::acquire(
            registry, Clock::now() + 10s, {}, [&] { return stop.load(); }, 0, who);
        if (!r.lease) {
            return;
        }
        std::lock_guard lock(order_mutex);
        order.push_back(who.label);
    };
    std::vector<std::thread> threads;
    for (int i = 0; i < 4; ++i) {
        threads.emplace_back(waiter, flood);
        REQUIRE(test::wait_until([&] { return registry.waiting() == std::size_t(i) + 1; }, 5s));
    }
    threads.emplace_back(waiter, tenant("newcomer"));
    REQUIRE(test::wait_until([&] { return registry.waiting() == 5; }, 5s));
    CHECK(registry.waiting_ahead_of(tenant("other")) <= 1);
    held.lease.reset();  // each waiter takes the slot, records itself and releases it
    for (auto& t : threads) {
        t.join();
    }
    REQUIRE(order.size() == 5);
    CHECK(order.front() == "newcomer");
}

TEST_CASE("the registry keeps a tenant within its concurrency cap", "[registry]") {
    SeededRandom random(1);
    SteadyTimeSource time;
    BackendRegistry registry(random, time);
    registry.worker_ready({"a", "127.0.0.1", 1, 4, ""});
    const auto capped = tenant("capped", 1, 0, 2);
    auto l1 = test::acquire(registry, Clock::now() + 1s, {}, {}, 0, capped);
    auto l2 = test::acquire(registry, Clock::now() + 1s, {}, {}, 0, capped);
    REQUIRE(l1.lease);
    REQUIRE(l2.lease);
    // Slots are free, but the tenant is at its cap: it waits; another tenant does not.
    CHECK(test::acquire(registry, Clock::now() + 30ms, {}, {}, 0, capped).status ==
          BackendRegistry::AcquireStatus::timeout);
    CHECK(test::acquire(registry, Clock::now() + 1s, {}, {}, 0, tenant("other")).lease);
    l1.lease.reset();
    CHECK(test::acquire(registry, Clock::now() + 1s, {}, {}, 0, capped).lease);
}

TEST_CASE("tenant config errors name the tenant, the key and what is allowed", "[tenants]") {
    std::vector<std::string> errors;
    PoolConfig c;
    apply_config_json(R"({"tenants": [
        {"name": "chat", "keys": ["k1"], "weight": 0, "priority": 1.5},
        {"name": "chat", "keys": ["k1"], "colour": "red"},
        {"name": "bad name!", "max_concurrency": -1}
    ]})",
                      "pool.json", c, errors);
    validate_tenants(c.tenants, errors);
    const auto has = [&](const std::string& needle) {
        return std::any_of(errors.begin(), errors.end(),
                           [&](const auto& e) { return e.find(needle) != std::string::npos; });
    };
    CHECK(has("pool.json: tenants[0] \"chat\" key \"weight\": 0 is not a number in 0.01..1000"));
    CHECK(has("tenants[0] \"chat\" key \"priority\": 1.5 is not an integer"));
    CHECK(has("tenants[1] \"chat\" key \"colour\": unknown tenant key"));
    CHECK(has("tenants[1]: key \"name\": \"chat\" is also tenants[0]'s"));
    CHECK(has("tenants[1] \"chat\": one of its keys already belongs to tenants[0]"));
    CHECK(has("tenants[2]: key \"name\": \"bad name!\" is not a valid name"));
    CHECK(has("tenants[2] \"bad name!\": names no client"));
    CHECK(has("key \"max_concurrency\": -1 is not an integer in 0..100000"));
    // Keys are secrets: never in an error.
    CHECK_FALSE(has("k1"));
}

TEST_CASE("tenants parse, print without their keys and count as a config change", "[tenants]") {
    std::vector<std::string> errors;
    PoolConfig c;
    apply_config_json(R"({"tenants": [{"name": "n8n", "keys": ["sk-secret"], "weight": 2,
                                       "priority": -1, "max_concurrency": 3}]})",
                      "pool.json", c, errors);
    validate_tenants(c.tenants, errors);
    REQUIRE(errors.empty());
    REQUIRE(c.tenants.size() == 1);
    CHECK(c.tenants[0].weight == 2);
    CHECK(c.tenants[0].priority == -1);
    CHECK(c.tenants[0].max_concurrency == 3);
    const auto shown = config_to_json(c).dump();
    CHECK(shown.find("sk-secret") == std::string::npos);
    CHECK(shown.find("n8n") != std::string::npos);
    const auto changed = changed_keys(PoolConfig{}, c);
    CHECK(std::find(changed.begin(), changed.end(), "tenants") != changed.end());
}
