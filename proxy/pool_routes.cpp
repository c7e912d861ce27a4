#include "proxy/pool_routes.hpp"

#include <fmt/chrono.h>
#include <fmt/format.h>

#include "common/credentials.hpp"
#include "common/error_body.hpp"
#include "common/http_client.hpp"
#include "proxy/worker_dialect.hpp"

namespace llama_pool {

void respond_json(Exchange& exchange, int status, const std::string& body,
                  const std::string& request_id) {
    Headers headers;
    headers.add("Content-Type", "application/json; charset=utf-8");
    headers.add("X-Request-Id", request_id);
    exchange.respond(status, std::move(headers), body);
}

namespace {

std::string iso_time(std::chrono::system_clock::time_point t) {
    return fmt::format("{:%Y-%m-%dT%H:%M:%S}Z",
                       fmt::gmtime(std::chrono::system_clock::to_time_t(t)));
}

}  // namespace

nlohmann::json PoolRoutes::queue_json() {
    // Per group, per tenant: what waits and what runs. Tenants are labels (a configured
    // name, a client address, or a hash of an unconfigured key), never keys.
    nlohmann::ordered_json groups = nlohmann::ordered_json::array();
    std::size_t total = 0;
    for (const auto& group : groups_.groups()) {
        nlohmann::ordered_json tenants = nlohmann::ordered_json::array();
        for (const auto& t : group->registry().queue_by_tenant()) {
            tenants.push_back({{"tenant", t.label},
                               {"waiting", t.waiting},
                               {"running", t.running},
                               {"oldest_wait_s", to_seconds(t.oldest_wait)}});
        }
        const auto depth = group->registry().waiting();
        total += depth;
        groups.push_back({{"name", group->name()}, {"waiting", depth}, {"tenants", tenants}});
    }
    return nlohmann::ordered_json{{"waiting", total}, {"groups", groups}};
}

nlohmann::json PoolRoutes::status_json() {
    nlohmann::ordered_json workers = nlohmann::ordered_json::array();
    nlohmann::ordered_json groups = nlohmann::ordered_json::array();
    int ready = 0, inflight = 0, slots = 0, available = 0;
    std::size_t queued = 0;
    for (const auto& group : groups_.groups()) {
        const auto backends = group->registry().snapshot();
        auto find_backend = [&](const std::string& id) -> const BackendSnapshot* {
            for (const auto& b : backends) {
                if (b.id == id) {
                    return &b;
                }
            }
            return nullptr;
        };
        int g_ready = 0, g_inflight = 0, g_slots = 0, g_workers = 0;
        for (const auto& w : group->supervisor().status()) {
            const auto* b = find_backend(w.id);
            const int in = b ? b->inflight : 0;
            nlohmann::ordered_json j;
            j["id"] = w.id;
            j["group"] = group->name();
            j["managed"] = w.managed;
            j["pid"] = w.pid;
            j["port"] = w.port;
            j["state"] = to_string(w.state);
            j["since"] = iso_time(w.since);
            j["restarts"] = w.restarts;
            j["last_exit_reason"] = w.last_exit_reason;
            j["inflight"] = in;
            j["slots"] = b ? b->serving_slots() : 0;
            j["available"] = b && b->available;
            j["upstream_connections_opened"] = b ? b->connections_opened : 0;
            j["breaker"] = b ? std::string(to_string(b->breaker)) : "closed";
            j["ejections"] = b ? b->ejections : 0;
            j["detail"] = w.detail;
            if (!w.last_output.empty()) {
                j["last_output"] = w.last_output;
            }
            workers.push_back(std::move(j));
            g_workers += w.managed ? 1 : 0;
            g_ready += w.state == WorkerState::ready ? 1 : 0;
            g_inflight += in;
            g_slots += b ? b->serving_slots() : 0;
        }
        const auto g_queued = group->registry().waiting();
        const auto& spec = group->spec();
        nlohmann::ordered_json g;
        g["name"] = group->name();
        g["aliases"] = spec.aliases;
        g["model"] = spec.model;
        g["default"] = spec.is_default;
        g["endpoints"] = spec.endpoints;
        g["workers"] = g_workers;
        g["min_workers"] = spec.min_workers;
        g["max_workers"] = spec.workers;
        g["idle_stop"] = spec.idle_stop;
        g["admin_hold"] = groups_.admin_hold(*group);
        g["ready"] = g_ready;
        g["available"] = group->registry().available_count();
        g["inflight"] = g_inflight;
        g["slots"] = g_slots;
        g["queued"] = g_queued;
        groups.push_back(std::move(g));
        ready += g_ready;
        inflight += g_inflight;
        slots += g_slots;
        available += group->registry().available_count();
        queued += g_queued;
    }
    nlohmann::ordered_json out;
    out["version"] = version_;
    out["workers"] = std::move(workers);
    out["groups"] = std::move(groups);
    out["totals"] = {{"workers", out["workers"].size()},
                     {"ready", ready},
                     {"available", available},
                     {"inflight", inflight},
                     {"slots", slots},
                     {"queued", queued}};
    out["worker_budget"] = {{"limit", groups_.budget().limit()},
                            {"in_use", groups_.budget().in_use()}};
    // A worker's output may hold any bytes; invalid UTF-8 must not turn /pool/status into a 500.
    return nlohmann::json::parse(
        out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

void PoolRoutes::health(Exchange& exchange, const std::string& request_id) {
    int available = 0;
    std::size_t total = 0;
    bool all_on_demand = true;
    nlohmann::ordered_json per_group = nlohmann::ordered_json::object();
    for (const auto& g : groups_.groups()) {
        const int a = g->registry().available_count();
        const auto t = g->supervisor().status().size();
        available += a;
        total += t;
        all_on_demand = all_on_demand && g->spec().min_workers == 0;
        per_group[g->name()] = {{"workers_ready", a}, {"workers_total", t}};
    }
    nlohmann::ordered_json body;
    // Ready when some worker can serve, or when every group starts on demand (nothing has to
    // run before the first request asks for it).
    if (available > 0 || (all_on_demand && !groups_.implicit())) {
        body["status"] = "ok";
        body["workers_ready"] = available;
        body["workers_total"] = total;
        if (!groups_.implicit()) {
            body["groups"] = std::move(per_group);
        }
        respond_json(exchange, 200, body.dump(), request_id);
        return;
    }
    body["status"] = "unavailable";
    body["workers_ready"] = 0;
    body["workers_total"] = total;
    if (!groups_.implicit()) {
        body["groups"] = std::move(per_group);
    }
    body["error"] = {{"code", 503},
                     {"message", "no worker is ready"},
                     {"type", "unavailable_error"},
                     {"source", "llama-pool"}};
    respond_json(exchange, 503, body.dump(), request_id);
}

namespace {

// One metadata call to a worker, with the pool's key for it. Short timeout: these endpoints
// are answered by the worker's HTTP threads, not its slots.
FetchResult worker_get(const BackendSnapshot& b, std::string_view target) {
    Headers headers;
    if (!b.api_key.empty()) {
        headers.add("Authorization", "Bearer " + b.api_key);
    }
    return http_fetch(b.host, b.port, "GET", target, headers, {}, milliseconds(5000), 8 << 20);
}

}  // namespace

std::vector<ModelGroup*> PoolRoutes::selected_groups(Exchange& exchange,
                                                     const std::string& /*request_id*/) {
    const auto& request = exchange.request();
    std::vector<ModelGroup*> out;
    if (!groups_.implicit() && !requested_model({}, request.query()).empty()) {
        // Routed as a request naming that model would be: name, alias, file name, default.
        out.push_back(&groups_.route(request, request.path()));
        return out;
    }
    for (const auto& g : groups_.groups()) {
        out.push_back(g.get());
    }
    return out;
}

void PoolRoutes::slots(Exchange& exchange, const std::string& request_id) {
    // Every available worker's slots, renumbered pool-wide, each saying which worker (and,
    // with groups, which group) and which of its slots it is. A worker that does not answer
    // 200 with a list is named in X-Llama-Pool-Unreported (all of them: a 502 that names
    // them), never dropped unsaid; for fail_on_no_slot the pool's own count of its requests
    // stands in for it.
    nlohmann::json all = nlohmann::json::array();
    std::vector<std::string> unreported;
    bool any_idle = false;
    for (auto* group : selected_groups(exchange, request_id)) {
        for (const auto& b : group->registry().snapshot()) {
            if (!b.available) {
                continue;
            }
            const bool idle_by_pool_count = b.inflight < b.capacity;
            const auto r = worker_get(b, "/slots");
            const auto doc = nlohmann::json::parse(r.body, nullptr, false);
            if (r.status != 200 || !doc.is_array()) {
                unreported.push_back(r.status == 0 ? fmt::format("{} ({})", b.id, r.error)
                                                   : fmt::format("{} (status {})", b.id, r.status));
                any_idle = any_idle || idle_by_pool_count;
                continue;
            }
            for (auto slot : doc) {
                if (!slot.is_object()) {
                    continue;
                }
                switch (slot_activity(slot)) {
                    case SlotActivity::idle:
                        any_idle = true;
                        break;
                    case SlotActivity::busy:
                        break;
                    case SlotActivity::unknown:
                        any_idle = any_idle || idle_by_pool_count;
                        break;
                }
                slot["worker"] = b.id;
                if (!groups_.implicit()) {
                    slot["group"] = group->name();
                }
                slot["worker_slot_id"] = slot.value("id", -1);
                slot["id"] = all.size();
                all.push_back(std::move(slot));
            }
        }
    }
    Headers headers;
    headers.add("Content-Type", "application/json; charset=utf-8");
    headers.add("X-Request-Id", request_id);
    std::string missing;
    for (const auto& u : unreported) {
        missing += (missing.empty() ? "" : ", ") + u;
    }
    if (!missing.empty()) {
        headers.add("X-Llama-Pool-Unreported", missing);
    }
    if (all.empty() && !unreported.empty()) {
        exchange.respond(502, std::move(headers),
                         make_error_body(502, "no worker answered GET /slots: " + missing));
        return;
    }
    const auto query = exchange.request().query();
    if (query.find("fail_on_no_slot=1") != std::string_view::npos && !any_idle) {
        exchange.respond(503, std::move(headers), make_error_body(503, "no slot available"));
        return;
    }
    exchange.respond(200, std::move(headers),
                     all.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

void PoolRoutes::props(Exchange& exchange, const std::string& request_id) {
    // One worker's properties (a group's workers share model and settings), with total_slots
    // the sum over the available workers and the per-worker breakdown.
    nlohmann::json props;
    nlohmann::json workers = nlohmann::json::array();
    int total = 0;
    std::string unreported;  // named in X-Llama-Pool-Unreported, as for /slots
    for (auto* group : selected_groups(exchange, request_id)) {
        for (const auto& b : group->registry().snapshot()) {
            if (!b.available) {
                continue;
            }
            const auto r = worker_get(b, "/props");
            auto doc = nlohmann::json::parse(r.body, nullptr, false);
            if (r.status != 200 || !doc.is_object()) {
                unreported +=
                    fmt::format("{}{} ({})", unreported.empty() ? "" : ", ", b.id,
                                r.status == 0 ? r.error : fmt::format("status {}", r.status));
                continue;
            }
            const int slots = doc.value("total_slots", b.capacity);
            total += slots;
            nlohmann::json w = {{"id", b.id}, {"total_slots", slots}};
            if (!groups_.implicit()) {
                w["group"] = group->name();
            }
            workers.push_back(std::move(w));
            if (props.is_null()) {
                props = std::move(doc);
            }
        }
    }
    Headers headers;
    headers.add("Content-Type", "application/json; charset=utf-8");
    headers.add("X-Request-Id", request_id);
    if (!unreported.empty()) {
        headers.add("X-Llama-Pool-Unreported", unreported);
    }
    if (props.is_null()) {
        exchange.respond(
            503, std::move(headers),
            make_error_body(503, unreported.empty()
                                     ? "no worker is ready"
                                     : "no worker answered GET /props: " + unreported));
        return;
    }
    props["total_slots"] = total;
    props["workers"] = std::move(workers);
    exchange.respond(200, std::move(headers),
                     props.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

void PoolRoutes::models(Exchange& exchange, const std::string& request_id) {
    // OpenAI's model list: one object per group, with what a client needs to pick one.
    nlohmann::ordered_json data = nlohmann::ordered_json::array();
    const auto created = std::chrono::duration_cast<std::chrono::seconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count();
    for (const auto& g : groups_.groups()) {
        nlohmann::ordered_json m;
        m["id"] = g->name();
        m["object"] = "model";
        m["created"] = created;
        m["owned_by"] = "llama-pool";
        m["aliases"] = g->spec().aliases;
        m["model_path"] = g->spec().model;
        m["default"] = g->spec().is_default;
        m["running"] = g->registry().available_count() > 0;
        m["workers"] = g->supervisor().worker_count();
        data.push_back(std::move(m));
    }
    nlohmann::ordered_json body;
    body["object"] = "list";
    body["data"] = std::move(data);
    respond_json(exchange, 200, body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
                 request_id);
}

void PoolRoutes::group_action(Exchange& exchange, std::string_view name, std::string_view action,
                              const std::string& request_id) {
    const auto result = action == "start" ? groups_.start_group(name) : groups_.stop_group(name);
    switch (result) {
        case GroupSet::AdminResult::accepted:
            respond_json(exchange, 202,
                         nlohmann::json{{"group", std::string(name)},
                                        {"action", std::string(action)},
                                        {"status", "accepted"}}
                             .dump(),
                         request_id);
            return;
        case GroupSet::AdminResult::not_found:
            respond_json(
                exchange, 404,
                make_error_body(404, "no group named " + std::string(name), "not_found_error"),
                request_id);
            return;
        case GroupSet::AdminResult::stopping:
            respond_json(exchange, 503, make_error_body(503, "the pool is shutting down"),
                         request_id);
            return;
    }
}

bool PoolRoutes::handle(Exchange& exchange, const std::string& path,
                        const std::string& request_id) {
    const auto& method = exchange.request().method;
    if (path == "/slots" && method == "GET") {
        slots(exchange, request_id);
        return true;
    }
    if (path == "/props" && method == "GET") {
        props(exchange, request_id);
        return true;
    }
    if ((path == "/v1/models" || path == "/models") && method == "GET" && !groups_.implicit()) {
        // One pool, one model: the worker's own list is the faithful answer. With groups the
        // pool knows them all, started or not.
        models(exchange, request_id);
        return true;
    }
    if (path == "/health") {
        health(exchange, request_id);
        return true;
    }
    if (path.rfind("/pool/", 0) != 0 && path != "/pool") {
        return false;
    }
    if (!admin_key_.empty()) {
        const auto key = presented_key(exchange.request().headers);
        if (!key || !constant_time_equals(*key, admin_key_)) {
            respond_json(exchange, 401, make_error_body(401, "Invalid API Key"), request_id);
            return true;
        }
    } else if (!is_loopback_address(exchange.remote_address())) {
        // No key set: restarts and worker logs are for this machine only, so a pool told to
        // listen on every address does not hand them to the network by default.
        respond_json(exchange, 403,
                     make_error_body(403,
                                     "/pool/* answers only clients on this machine while no "
                                     "admin key is set (auth.admin_key, --admin-key)",
                                     "authentication_error"),
                     request_id);
        return true;
    }
    if (!admin(exchange, path, request_id) &&
        !(admin_routes_ && admin_routes_->handle(exchange, path, request_id))) {
        respond_json(exchange, 404, make_error_body(404, "File Not Found", "not_found_error"),
                     request_id);
    }
    return true;
}

bool PoolRoutes::admin(Exchange& exchange, const std::string& path, const std::string& request_id) {
    const auto& method = exchange.request().method;
    if (path == "/pool/restart" && method == "POST") {
        // Every group rolls over; a group already rolling says so.
        bool any_started = false, any_running = false, stopping = false;
        for (const auto& g : groups_.groups()) {
            switch (g->supervisor().rolling_restart(g->supervisor().config())) {
                case Supervisor::RolloutStart::started:
                    any_started = true;
                    break;
                case Supervisor::RolloutStart::already_running:
                    any_running = true;
                    break;
                case Supervisor::RolloutStart::stopping:
                    stopping = true;
                    break;
            }
        }
        if (stopping) {
            respond_json(exchange, 503, make_error_body(503, "the pool is shutting down"),
                         request_id);
        } else if (any_started) {
            respond_json(exchange, 202, R"({"rollout":"started"})", request_id);
        } else if (any_running) {
            respond_json(exchange, 409,
                         make_error_body(409, "a rolling restart is already running",
                                         "invalid_request_error"),
                         request_id);
        }
        return true;
    }
    if (path == "/pool/queue" && method == "GET") {
        respond_json(exchange, 200, queue_json().dump(), request_id);
        return true;
    }
    if (path == "/pool/status" && method == "GET") {
        respond_json(exchange, 200,
                     status_json().dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
                     request_id);
        return true;
    }
    constexpr std::string_view group_prefix = "/pool/groups/";
    if (path.rfind(group_prefix, 0) == 0 && method == "POST") {
        const auto rest = std::string_view(path).substr(group_prefix.size());
        const auto slash = rest.find('/');
        const auto action = slash == std::string_view::npos ? "" : rest.substr(slash + 1);
        if (action == "start" || action == "stop") {
            group_action(exchange, rest.substr(0, slash), action, request_id);
            return true;
        }
        return false;
    }
    constexpr std::string_view prefix = "/pool/workers/";
    if (path.rfind(prefix, 0) != 0) {
        return false;
    }
    const auto rest = path.substr(prefix.size());
    const auto slash = rest.find('/');
    const auto id = rest.substr(0, slash);
    const auto action = slash == std::string::npos ? std::string() : rest.substr(slash + 1);
    if (action == "log" && method == "GET") {
        for (const auto& g : groups_.groups()) {
            if (const auto lines = g->supervisor().worker_output(id)) {
                respond_json(exchange, 200,
                             nlohmann::json{{"id", id}, {"lines", *lines}}.dump(
                                 -1, ' ', false, nlohmann::json::error_handler_t::replace),
                             request_id);
                return true;
            }
        }
        respond_json(exchange, 404, make_error_body(404, "no worker with id " + id), request_id);
        return true;
    }
    if (action == "restart" && method == "POST") {
        for (const auto& g : groups_.groups()) {
            if (g->supervisor().restart_worker(id)) {
                respond_json(exchange, 202,
                             nlohmann::json{{"id", id}, {"restart", "requested"}}.dump(),
                             request_id);
                return true;
            }
        }
        respond_json(exchange, 404, make_error_body(404, "no worker with id " + id), request_id);
        return true;
    }
    return false;
}

}  // namespace llama_pool
