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

std::string html_escape(std::string_view s) {
    std::string out;
    for (const char c : s) {
        switch (c) {
            case '<':
                out += "&lt;";
                break;
            case '>':
                out += "&gt;";
                break;
            case '&':
                out += "&amp;";
                break;
            case '"':
                out += "&quot;";
                break;
            default:
                out += c;
        }
    }
    return out;
}

}  // namespace

nlohmann::json PoolRoutes::status_json() {
    const auto backends = registry_.snapshot();
    auto find_backend = [&](const std::string& id) -> const BackendSnapshot* {
        for (const auto& b : backends) {
            if (b.id == id) {
                return &b;
            }
        }
        return nullptr;
    };
    nlohmann::ordered_json workers = nlohmann::ordered_json::array();
    int ready = 0, inflight = 0, slots = 0;
    if (supervisor_ != nullptr) {
        for (const auto& w : supervisor_->status()) {
            const auto* b = find_backend(w.id);
            const int in = b ? b->inflight : 0;
            nlohmann::ordered_json j;
            j["id"] = w.id;
            j["managed"] = w.managed;
            j["pid"] = w.pid;
            j["port"] = w.port;
            j["state"] = to_string(w.state);
            j["since"] = iso_time(w.since);
            j["restarts"] = w.restarts;
            j["last_exit_reason"] = w.last_exit_reason;
            j["inflight"] = in;
            j["slots"] = w.capacity;
            j["available"] = b && b->available;
            j["upstream_connections_opened"] = b ? b->connections_opened : 0;
            j["breaker"] = b ? std::string(to_string(b->breaker)) : "closed";
            j["ejections"] = b ? b->ejections : 0;
            j["detail"] = w.detail;
            if (!w.last_output.empty()) {
                j["last_output"] = w.last_output;
            }
            workers.push_back(std::move(j));
            ready += w.state == WorkerState::ready ? 1 : 0;
            inflight += in;
            slots += w.state == WorkerState::ready ? w.capacity : 0;
        }
    }
    nlohmann::ordered_json out;
    out["version"] = version_;
    out["workers"] = std::move(workers);
    out["totals"] = {{"workers", out["workers"].size()},
                     {"ready", ready},
                     {"available", registry_.available_count()},
                     {"inflight", inflight},
                     {"slots", slots},
                     {"queued", registry_.waiting()}};
    // A worker's output may hold any bytes; invalid UTF-8 must not turn /pool/status into a 500.
    return nlohmann::json::parse(
        out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

void PoolRoutes::health(Exchange& exchange, const std::string& request_id) {
    const int available = registry_.available_count();
    const auto backends = registry_.snapshot();
    nlohmann::ordered_json body;
    if (available > 0) {
        body["status"] = "ok";
        body["workers_ready"] = available;
        body["workers_total"] = supervisor_ ? supervisor_->status().size() : backends.size();
        respond_json(exchange, 200, body.dump(), request_id);
        return;
    }
    body["status"] = "unavailable";
    body["workers_ready"] = 0;
    body["workers_total"] = supervisor_ ? supervisor_->status().size() : backends.size();
    body["error"] = {{"code", 503},
                     {"message", "no worker is ready"},
                     {"type", "unavailable_error"},
                     {"source", "llama-pool"}};
    respond_json(exchange, 503, body.dump(), request_id);
}

void PoolRoutes::index_page(Exchange& exchange, const std::string& request_id) {
    const auto status = status_json();
    std::string rows;
    for (const auto& w : status["workers"]) {
        rows += fmt::format(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}/{}</td><td>{}</td><td>{}</td></tr>\n",
            html_escape(w["id"].get<std::string>()), html_escape(w["state"].get<std::string>()),
            w["pid"].get<int>(), w["inflight"].get<int>(), w["slots"].get<int>(),
            w["restarts"].get<int>(), html_escape(w["detail"].get<std::string>()));
    }
    const auto& t = status["totals"];
    const auto page = fmt::format(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>llama-pool</title></head>\n"
        "<body><h1>llama-pool {}</h1>\n"
        "<p>{} of {} workers ready; {} requests in flight on {} slots; {} queued.</p>\n"
        "<table border=\"1\" cellpadding=\"4\"><tr><th>worker</th><th>state</th><th>pid</th>"
        "<th>in flight/slots</th><th>restarts</th><th>detail</th></tr>\n{}</table>\n"
        "<p>JSON: <a href=\"/pool/status\">/pool/status</a>, health: <a href=\"/health\">/health"
        "</a>, metrics: <a href=\"/metrics\">/metrics</a></p></body></html>\n",
        html_escape(version_), t["ready"].get<int>(), t["workers"].get<int>(),
        t["inflight"].get<int>(), t["slots"].get<int>(), t["queued"].get<int>(), rows);
    Headers headers;
    headers.add("Content-Type", "text/html; charset=utf-8");
    headers.add("X-Request-Id", request_id);
    exchange.respond(200, std::move(headers), page);
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

void PoolRoutes::slots(Exchange& exchange, const std::string& request_id) {
    // Every available worker's slots, renumbered pool-wide, each saying which worker and
    // which of its slots it is. A worker that does not answer 200 with a list is named in
    // X-Llama-Pool-Unreported (all of them: a 502 that names them), never dropped unsaid;
    // for fail_on_no_slot the pool's own count of its requests stands in for it.
    nlohmann::json all = nlohmann::json::array();
    std::vector<std::string> unreported;
    bool any_idle = false;
    for (const auto& b : registry_.snapshot()) {
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
            slot["worker_slot_id"] = slot.value("id", -1);
            slot["id"] = all.size();
            all.push_back(std::move(slot));
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
    // One worker's properties (they share model and settings), with total_slots the sum over
    // the available workers and the per-worker breakdown.
    nlohmann::json props;
    nlohmann::json workers = nlohmann::json::array();
    int total = 0;
    std::string unreported;  // named in X-Llama-Pool-Unreported, as for /slots
    for (const auto& b : registry_.snapshot()) {
        if (!b.available) {
            continue;
        }
        const auto r = worker_get(b, "/props");
        auto doc = nlohmann::json::parse(r.body, nullptr, false);
        if (r.status != 200 || !doc.is_object()) {
            unreported += fmt::format("{}{} ({})", unreported.empty() ? "" : ", ", b.id,
                                      r.status == 0 ? r.error : fmt::format("status {}", r.status));
            continue;
        }
        const int slots = doc.value("total_slots", b.capacity);
        total += slots;
        workers.push_back({{"id", b.id}, {"total_slots", slots}});
        if (props.is_null()) {
            props = std::move(doc);
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
    if (path == "/health") {
        health(exchange, request_id);
        return true;
    }
    if (path == "/" && (method == "GET" || method == "HEAD")) {
        index_page(exchange, request_id);
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
    if (path == "/pool/restart" && method == "POST" && supervisor_ != nullptr) {
        switch (supervisor_->rolling_restart(supervisor_->config())) {
            case Supervisor::RolloutStart::started:
                respond_json(exchange, 202, R"({"rollout":"started"})", request_id);
                break;
            case Supervisor::RolloutStart::already_running:
                respond_json(exchange, 409,
                             make_error_body(409, "a rolling restart is already running",
                                             "invalid_request_error"),
                             request_id);
                break;
            case Supervisor::RolloutStart::stopping:
                respond_json(exchange, 503, make_error_body(503, "the pool is shutting down"),
                             request_id);
                break;
        }
        return true;
    }
    if (path == "/pool/status" && method == "GET") {
        respond_json(exchange, 200,
                     status_json().dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
                     request_id);
        return true;
    }
    constexpr std::string_view prefix = "/pool/workers/";
    if (path.rfind(prefix, 0) == 0 && supervisor_ != nullptr) {
        const auto rest = path.substr(prefix.size());
        const auto slash = rest.find('/');
        const auto id = rest.substr(0, slash);
        const auto action = slash == std::string::npos ? std::string() : rest.substr(slash + 1);
        if (action == "log" && method == "GET") {
            if (const auto lines = supervisor_->worker_output(id)) {
                respond_json(exchange, 200,
                             nlohmann::json{{"id", id}, {"lines", *lines}}.dump(
                                 -1, ' ', false, nlohmann::json::error_handler_t::replace),
                             request_id);
            } else {
                respond_json(exchange, 404, make_error_body(404, "no worker with id " + id),
                             request_id);
            }
            return true;
        }
        if (action == "restart" && method == "POST") {
            if (supervisor_->restart_worker(id)) {
                respond_json(exchange, 202,
                             nlohmann::json{{"id", id}, {"restart", "requested"}}.dump(),
                             request_id);
            } else {
                respond_json(exchange, 404, make_error_body(404, "no worker with id " + id),
                             request_id);
            }
            return true;
        }
    }
    respond_json(exchange, 404, make_error_body(404, "File Not Found", "not_found_error"),
                 request_id);
    return true;
}

}  // namespace llama_pool
