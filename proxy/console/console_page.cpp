// The console page as served: the built-in index.html with today's status table inside.
#include <fmt/format.h>

#include "proxy/console/console.hpp"
#include "proxy/console/console_assets.hpp"

namespace llama_pool {

namespace {

std::string html_escape(std::string_view s) {
    std::string out;
    out.reserve(s.size());
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

std::string text(const nlohmann::json& j, const char* key) {
    const auto it = j.find(key);
    if (it == j.end() || it->is_null()) {
        return "";
    }
    return html_escape(it->is_string() ? it->get<std::string>() : it->dump());
}

void replace_all(std::string& s, std::string_view from, std::string_view to) {
    for (auto at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) {
        s.replace(at, from.size(), to);
    }
}

}  // namespace

std::string_view console_csp() {
    return "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
           "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
}

std::string status_table_html(const nlohmann::json& status) {
    std::string rows;
    for (const auto& w : status.value("workers", nlohmann::json::array())) {
        rows += fmt::format(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}/{}</td><td>{}</td><td>{}</td>"
            "</tr>\n",
            text(w, "group"), text(w, "id"), text(w, "state"), text(w, "pid"), text(w, "inflight"),
            text(w, "slots"), text(w, "restarts"), text(w, "detail"));
    }
    const auto t = status.value("totals", nlohmann::json::object());
    return fmt::format(
        "<p id=\"summary\">{} of {} workers ready; {} requests in flight on {} slots; {} "
        "queued.</p>\n"
        "<table id=\"fallback-table\"><caption>Workers</caption><tr><th scope=\"col\">group</th>"
        "<th scope=\"col\">worker</th><th scope=\"col\">state</th><th scope=\"col\">pid</th>"
        "<th scope=\"col\">in flight/slots</th><th scope=\"col\">restarts</th>"
        "<th scope=\"col\">detail</th></tr>\n{}</table>\n",
        text(t, "ready"), text(t, "workers"), text(t, "inflight"), text(t, "slots"),
        text(t, "queued"), rows);
}

std::string console_page_html(const nlohmann::json& status, std::string_view version) {
    const auto index = find_console_asset("index.html");
    std::string page = index ? std::string(index->body) : std::string("@STATUS_TABLE@");
    // The version first: the table holds text from workers, which must not be scanned again.
    replace_all(page, "@VERSION@", html_escape(version));
    replace_all(page, "@STATUS_TABLE@", status_table_html(status));
    return page;
}

}  // namespace llama_pool
