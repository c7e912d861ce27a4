// A stand-in for llama-server with fault knobs, for the faults a real worker cannot be made
// to show on demand. It mimics the endpoints and response shapes the pool relies on and
// accepts llama-server's own flags, so the supervisor can launch it as a worker.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <deque>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/error_body.hpp"
#include "common/http_server.hpp"

namespace {

using namespace llama_pool;
using json = nlohmann::json;

struct Options {
    std::string host = "127.0.0.1";
    int port = 8080;
    int slots = 4;
    // Client connections held at once (the HTTP server's default is 1024); a benchmark of
    // 10,000 streams raises it with --max-connections.
    int max_connections = 1024;
    int ctx = 4096;
    int load_delay_ms = 0;
    int latency_ms = 0;
    double tokens_per_second = 500;
    int fail_status = 0;
    int fail_after = 0;  // --fail-status applies after this many good completions
    bool hang = false;
    int crash_after = 0;
    int stall_after_events = -1;
    bool garbage = false;
    // Each streamed event carries "t_mono_ns", the CLOCK_MONOTONIC time it was written at, so
    // that a benchmark on the same machine measures each event's delivery through a proxy.
    bool stamp_events = false;
    std::string model = "fake-model.gguf";
    std::string api_key;
    // Re-read before every completion, one line per port: "PORT fail STATUS", "PORT garbage"
    // (an invalid status line), "PORT truncate [N]" (a reply cut off inside its JSON; a
    // stream after N whole events), "PORT stall N" (streams stop after N events until the
    // client leaves), "PORT hold" (completions keep their slot and wait, until the line
    // changes: a gate that orders events in tests without sleeps), "PORT interim CODE" (an
    // interim CODE response, then an oddly framed 200; a 101 ends there) or "PORT ok". Lets a test
    // break one worker of a pool whose workers all get the same arguments, or toggle faults on a
    // running upstream.
    std::string fault_file;
    // Non-stream replies carry the bracketed tags of the prompt ("[s12]") instead of tokens,
    // so a test can see which parts of a document reached a summary, and in what order.
    bool echo_tags = false;
    // When set, one JSON line per request received (method, target, headers, body length,
    // body bytes in hex): what actually reached the worker, for tests that check it.
    std::string log_requests;
    // Act as BitNet's 2024 llama-server fork: /slots only with --slots and with "state" in
    // place of is_processing; client mistakes answered 500; a prompt over the slot context
    // cut silently (200, "truncated": true); a log line per request, health probes included.
    bool bitnet = false;
    bool slots_endpoint = false;  // --slots was given
    bool refuse_slots = false;    // /slots answers 501 whatever the flags
};

// A fault to act out on the next completion.
struct Fault {
    enum class Kind { none, fail, garbage, truncate, stall, hold, interim };
    Kind kind = Kind::none;
    int value = 0;  // the status for fail and interim, the events before stalling for stall
};

std::string bracketed_tags(const std::string& text) {
    std::string out;
    for (std::size_t open = text.find('['); open != std::string::npos;
         open = text.find('[', open + 1)) {
        const auto close = text.find(']', open);
        if (close == std::string::npos || close - open > 16) {
            continue;
        }
        out += text.substr(open, close - open + 1) + " ";
    }
    return out;
}

void usage() {
    std::fprintf(
        stderr,
        "usage: fake-llama-server [--host H] [--port P] [--parallel N] [--max-connections N]\n"
        "  [--load-delay-ms MS] [--latency-ms MS] [--tokens-per-second N]\n"
        "  [--fail-status CODE [--fail-after N]] [--hang] [--crash-after N] "
        "[--stall-after-events N]\n"
        "  [--garbage] [--echo-tags] [--stamp-events] [--fault-file F] [--log-requests F]\n"
        "  [--bitnet-dialect] [--refuse-slots]\n"
        "  [--api-key K] [--api-key-file F] [--model PATH] [llama-server flags are "
        "accepted]\n");
}

// Slots with a FIFO wait, like llama-server's deferred queue.
class Slots {
  public:
    explicit Slots(int n) : free_(n), total_(n) {}
    int acquire() {
        std::unique_lock lock(mutex_);
        const auto ticket = next_ticket_++;
        ++deferred_;
        peak_ = std::max(peak_, total_ - free_ + deferred_);
        cv_.wait(lock, [&] { return free_ > 0 && ticket == serving_; });
        --deferred_;
        ++serving_;
        --free_;
        cv_.notify_all();
        return total_ - free_ - 1;
    }
    void release() {
        {
            std::lock_guard lock(mutex_);
            ++free_;
        }
        cv_.notify_all();
    }
    int busy() const {
        std::lock_guard lock(mutex_);
        return total_ - free_;
    }
    int deferred() const {
        std::lock_guard lock(mutex_);
        return deferred_;
    }
    int total() const { return total_; }
    // The most requests this worker ever held at once, running or queued: a test reads it to
    // see that the pool never sent more than the slots it was told of.
    int peak() const {
        std::lock_guard lock(mutex_);
        return peak_;
    }

  private:
    mutable std::mutex mutex_;
    std::condition_variable cv_;
    int free_;
    int total_;
    int deferred_ = 0;
    int peak_ = 0;
    unsigned long long next_ticket_ = 0;
    unsigned long long serving_ = 0;
};

class FakeServer {
  public:
    explicit FakeServer(Options o) : opt_(std::move(o)), slots_(opt_.slots) {
        started_ = std::chrono::steady_clock::now();
    }

    void handle(HttpExchange& ex) {
        const auto& req = ex.request();
        const std::string path(req.path());
        log_request(req);
        if (opt_.bitnet) {
            std::fprintf(stderr, "request: %s %s 127.0.0.1\n", req.method.c_str(), path.c_str());
            std::fflush(stderr);
        }
        if (opt_.garbage && path != "/health") {
            return garbage(ex);
        }
        if (loading()) {
            return error(ex, 503, "Loading model", "unavailable_error");
        }
        if (path == "/health") {
            return reply(ex, 200, json{{"status", "ok"}});
        }
        // Test-only, and without the key like /health: tests ask the worker directly.
        if (path == "/fake/stats") {
            return reply(ex, 200, json{{"peak_concurrent", slots_.peak()}});
        }
        if (!opt_.api_key.empty() && !authorized(req)) {
            return error(ex, 401, "Invalid API Key", "authentication_error");
        }
        if (path == "/props") {
            return reply(ex, 200,
                         json{{"total_slots", opt_.slots},
                              {"model_path", opt_.model},
                              {"build_info", "fake-llama-server"},
                              {"default_generation_settings", {{"n_ctx", opt_.ctx / opt_.slots}}}});
        }
        if (path == "/slots") {
            if (opt_.refuse_slots || (opt_.bitnet && !opt_.slots_endpoint)) {
                return error(ex, 501, "This server does not support slots endpoint.",
                             "not_supported_error");
            }
            json arr = json::array();
            const int busy = slots_.busy();
            for (int i = 0; i < opt_.slots; ++i) {
                json slot = {{"id", i}, {"n_ctx", opt_.ctx / opt_.slots}};
                if (opt_.bitnet) {
                    slot["state"] = i < busy ? 1 : 0;
                } else {
                    slot["is_processing"] = i < busy;
                }
                arr.push_back(std::move(slot));
            }
            return reply(ex, 200, arr);
        }
        if (path == "/metrics") {
            const auto text = fmt::format(
                "# HELP llamacpp:requests_processing Number of requests processing.\n"
                "# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing {}\n"
                "# HELP llamacpp:requests_deferred Number of requests deferred.\n"
                "# TYPE llamacpp:requests_deferred gauge\nllamacpp:requests_deferred {}\n"
                "# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.\n"
                "# TYPE llamacpp:tokens_predicted_total counter\nllamacpp:tokens_predicted_total "
                "{}\n"
                "# HELP llamacpp:n_decode_total Total number of llama_decode() calls\n"
                "# TYPE llamacpp:n_decode_total counter\nllamacpp:n_decode_total {}\n",
                slots_.busy(), slots_.deferred(), tokens_total_.load(), decode_calls_.load());
            Headers h;
            h.add("Content-Type", "text/plain; version=0.0.4");
            ex.respond(200, h, text);
            return;
        }
        if (path == "/v1/models") {
            return reply(
                ex, 200,
                json{{"object", "list"},
                     {"data",
                      json::array(
                          {{{"id", opt_.model}, {"object", "model"}, {"owned_by", "llamacpp"}}})}});
        }
        if (path == "/tokenize") {
            const auto body = parse(ex);
            if (!body) {
                return;
            }
            json tokens = json::array();
            for (const char c : body->value("content", std::string())) {
                tokens.push_back(static_cast<unsigned char>(c));
            }
            return reply(ex, 200, json{{"tokens", tokens}});
        }
        if (path == "/detokenize") {
            const auto body = parse(ex);
            if (!body) {
                return;
            }
            std::string content;
            for (const auto& t : body->value("tokens", json::array())) {
                content += static_cast<char>(t.get<int>());
            }
            return reply(ex, 200, json{{"content", content}});
        }
        if (path == "/completion" || path == "/completions" || path == "/v1/completions") {
            return completion(ex, path != "/completion" && path != "/completions"
                                      ? Shape::openai_text
                                      : Shape::native);
        }
        if (path == "/v1/chat/completions" || path == "/chat/completions") {
            return completion(ex, Shape::openai_chat);
        }
        if (path == "/v1/embeddings" || path == "/embeddings" || path == "/embedding") {
            return embeddings(ex);
        }
        error(ex, 404, "File Not Found", "not_found_error");
    }

  private:
    enum class Shape { native, openai_text, openai_chat };

    Fault fault_from_file() const {
        Fault fault;
        if (opt_.fault_file.empty()) {
            return fault;
        }
        std::ifstream in(opt_.fault_file);
        std::string line;
        while (std::getline(in, line)) {
            std::istringstream fields(line);
            int port = 0;
            std::string what;
            if (!(fields >> port >> what) || port != opt_.port) {
                continue;
            }
            if (what == "fail" && fields >> fault.value) {
                fault.kind = Fault::Kind::fail;
            } else if (what == "garbage") {
                fault.kind = Fault::Kind::garbage;
            } else if (what == "truncate") {
                fault.kind = Fault::Kind::truncate;
                fields >> fault.value;  // whole events a stream gets before the cut (0)
            } else if (what == "stall" && fields >> fault.value) {
                fault.kind = Fault::Kind::stall;
            } else if (what == "hold") {
                fault.kind = Fault::Kind::hold;
            } else if (what == "interim" && fields >> fault.value) {
                fault.kind = Fault::Kind::interim;
            }
            return fault;
        }
        return fault;
    }

    void log_request(const HttpRequest& req) {
        if (opt_.log_requests.empty()) {
            return;
        }
        json headers = json::array();
        for (const auto& [name, value] : req.headers.fields()) {
            headers.push_back({name, value});
        }
        std::string hex;
        static constexpr char kDigits[] = "0123456789abcdef";
        for (const char c : std::string_view(req.body).substr(0, 4096)) {
            hex += kDigits[static_cast<unsigned char>(c) >> 4];
            hex += kDigits[static_cast<unsigned char>(c) & 15];
        }
        const json line = {{"method", req.method},
                           {"target", req.target},
                           {"version_minor", req.version_minor},
                           {"headers", headers},
                           {"body_length", req.body.size()},
                           {"body_hex_prefix", hex},
                           {"port", opt_.port}};
        std::lock_guard lock(log_mutex_);
        std::ofstream(opt_.log_requests, std::ios::app)
            << line.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
    }

    static void garbage(HttpExchange& ex) {
        ex.write_raw("HTTP/1.1 2x0 Garbage\r\nContent-Length: nope\r\n\r\n{\"trunc");
        ex.close_after_response();
        ex.abort();
    }

    // A reply cut off inside its JSON, as from a process that died while writing it: a
    // promised length that never arrives, or a stream that ends inside an event after
    // `whole_events` whole ones.
    static void truncated(HttpExchange& ex, bool stream, int whole_events) {
        if (stream) {
            std::string raw =
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                "Transfer-Encoding: chunked\r\n\r\n";
            for (int i = 0; i < whole_events; ++i) {
                const auto event = fmt::format(
                    "data: {{\"content\":\" tok{}\",\"stop\":false,\"tokens_predicted\":{}}}\n\n",
                    i, i + 1);
                raw += fmt::format("{:x}\r\n{}\r\n", event.size(), event);
            }
            raw += "10\r\ndata: {\"content\"\r\n";
            ex.write_raw(raw);
        } else {
            ex.write_raw(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
                "Content-Length: 200\r\n\r\n{\"content\":\" tok0 to");
        }
        ex.close_after_response();
        ex.abort();
    }

    // An interim response with status `code` first (RFC 9110 §15.2: a client must read past any
    // 1xx), then, unless it was a 101, a final reply that is well framed but odd in the ways
    // a relay must clean up: hop-by-hop fields, one named by Connection, and a Content-Length
    // beside chunked coding (RFC 9112 §6.3: the length is to be dropped, the chunks read).
    static void interim_then_odd_reply(HttpExchange& ex, int code) {
        std::string raw = fmt::format("HTTP/1.1 {} Interim\r\nLink: </x>; rel=preload\r\n", code);
        if (code == 101) {
            ex.write_raw(raw + "Connection: Upgrade\r\nUpgrade: h2c\r\n\r\n");
            ex.close_after_response();
            ex.abort();
            return;
        }
        const std::string body = R"({"content":" interim-ok","stop":true,"tokens_predicted":1})";
        raw += fmt::format(
            "\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
            "Connection: X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n"
            "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            body.size(), body);
        ex.write_raw(raw);
        ex.close_after_response();
        ex.abort();
    }

    static void wait_for_client_to_leave(HttpExchange& ex) {
        while (!ex.client_gone()) {
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        ex.abort();
    }

    bool loading() const {
        return std::chrono::steady_clock::now() - started_ <
               std::chrono::milliseconds(opt_.load_delay_ms);
    }

    bool authorized(const HttpRequest& req) const {
        const auto auth = req.headers.get("Authorization");
        const auto key = req.headers.get("X-Api-Key");
        return (auth && *auth == "Bearer " + opt_.api_key) || (key && *key == opt_.api_key);
    }

    static void reply(HttpExchange& ex, int status, const json& body) {
        Headers h;
        h.add("Content-Type", "application/json; charset=utf-8");
        h.add("Server", "fake-llama-server");
        ex.respond(status, h, body.dump());
    }

    static void error(HttpExchange& ex, int status, const std::string& message,
                      const std::string& type) {
        reply(ex, status,
              json{{"error", {{"code", status}, {"message", message}, {"type", type}}}});
    }

    std::optional<json> parse(HttpExchange& ex) {
        auto body = json::parse(ex.request().body, nullptr, false);
        if (body.is_discarded() || !body.is_object()) {
            error(ex, 500, "[json.exception.parse_error] invalid JSON", "server_error");
            return std::nullopt;
        }
        return body;
    }

    // An embedding that tells its input and its server apart: [digest of the text, its
    // length, this worker's port]. The OpenAI shape for "input" (on any route, as
    // llama-server), the native array for "content". Each input takes a slot for
    // --latency-ms; the fault file's "fail" and "hold" apply to the whole request.
    void embeddings(HttpExchange& ex) {
        const auto body = parse(ex);
        if (!body) {
            return;
        }
        const bool oai = body->contains("input");
        const auto input = oai ? (*body)["input"] : body->value("content", json());
        std::vector<std::string> texts;
        if (input.is_string()) {
            texts.push_back(input.get<std::string>());
        } else if (input.is_array() && !input.empty() && !input[0].is_number()) {
            for (const auto& item : input) {
                texts.push_back(item.is_string() ? item.get<std::string>() : item.dump());
            }
        } else if (input.is_array() && !input.empty()) {
            texts.push_back(input.dump());  // one prompt of token ids
        } else {
            return error(ex, 400, "\"input\" or \"content\" must be provided",
                         "invalid_request_error");
        }
        const auto fault = fault_from_file();
        if (fault.kind == Fault::Kind::fail) {
            return error(ex, fault.value, "injected failure (fault file)", "server_error");
        }
        while (fault.kind == Fault::Kind::hold && fault_from_file().kind == Fault::Kind::hold) {
            if (ex.client_gone()) {
                ex.abort();
                return;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        ++served_;
        json data = json::array();
        long long tokens = 0;
        for (std::size_t i = 0; i < texts.size(); ++i) {
            slots_.acquire();
            const bool in_time = sleep_watching(ex, std::chrono::milliseconds(opt_.latency_ms));
            slots_.release();
            if (!in_time) {
                ex.abort();
                return;
            }
            std::uint32_t digest = 2166136261u;
            for (const char c : texts[i]) {
                digest = (digest ^ static_cast<unsigned char>(c)) * 16777619u;
            }
            const json vector = {static_cast<double>(digest % 100000),
                                 static_cast<double>(texts[i].size()),
                                 static_cast<double>(opt_.port)};
            tokens += static_cast<long long>(texts[i].size());
            if (oai) {
                data.push_back({{"embedding", vector}, {"index", i}, {"object", "embedding"}});
            } else {
                data.push_back({{"index", i}, {"embedding", json::array({vector})}});
            }
        }
        if (!oai) {
            return reply(ex, 200, data);
        }
        reply(ex, 200,
              json{{"model", opt_.model},
                   {"object", "list"},
                   {"usage", {{"prompt_tokens", tokens}, {"total_tokens", tokens}}},
                   {"data", data}});
    }

    void completion(HttpExchange& ex, Shape shape) {
        const auto body = parse(ex);
        if (!body) {
            return;
        }
        if (shape != Shape::openai_chat && !body->contains("prompt")) {
            if (opt_.bitnet) {
                return error(ex, 500,
                             "\"prompt\" must be a string, an array of token ids or an array of "
                             "prompts",
                             "server_error");
            }
            return error(ex, 400, "\"prompt\" must be provided", "invalid_request_error");
        }
        // Tokens are bytes here, as in /tokenize.
        const bool cut_prompt = opt_.bitnet && shape == Shape::native && body->contains("prompt") &&
                                (*body)["prompt"].is_string() &&
                                (*body)["prompt"].get<std::string>().size() >=
                                    static_cast<std::size_t>(opt_.ctx / opt_.slots);
        if (shape == Shape::openai_chat && !body->contains("messages")) {
            if (opt_.bitnet) {
                return error(ex, 500, "[json.exception.out_of_range.403] key 'messages' not found",
                             "server_error");
            }
            return error(ex, 400, "'messages' is required", "invalid_request_error");
        }
        const auto served = ++served_;
        if (opt_.crash_after > 0 && served > opt_.crash_after) {
            std::fprintf(stderr, "fake-llama-server: crashing after %d requests\n",
                         opt_.crash_after);
            std::fflush(stderr);
            ::_exit(3);
        }
        if (opt_.fail_status != 0 && served > opt_.fail_after) {
            return error(ex, opt_.fail_status, "injected failure", "server_error");
        }
        const int n = body->value("n_predict", body->value("max_tokens", 16));
        const bool stream = body->value("stream", false);
        const auto fault = fault_from_file();
        switch (fault.kind) {
            case Fault::Kind::fail:
                return error(ex, fault.value, "injected failure (fault file)", "server_error");
            case Fault::Kind::garbage:
                return garbage(ex);
            case Fault::Kind::truncate:
                return truncated(ex, stream, fault.value);
            case Fault::Kind::interim:
                return interim_then_odd_reply(ex, fault.value);
            case Fault::Kind::stall:
            case Fault::Kind::hold:
            case Fault::Kind::none:
                break;
        }
        int stall_after = opt_.stall_after_events;
        if (fault.kind == Fault::Kind::stall) {
            stall_after = fault.value;
        }
        const int slot = slots_.acquire();
        struct Release {
            Slots& s;
            ~Release() { s.release(); }
        } release{slots_};
        if (opt_.hang) {
            return wait_for_client_to_leave(ex);
        }
        // A gate for tests: the completion keeps its slot, answering nothing, for as long as
        // the fault file says "hold" for this port; then it goes on as usual.
        while (fault.kind == Fault::Kind::hold && fault_from_file().kind == Fault::Kind::hold) {
            if (ex.client_gone()) {
                ex.abort();
                return;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        sleep_watching(ex, std::chrono::milliseconds(opt_.latency_ms));
        const auto per_token =
            std::chrono::microseconds(static_cast<long long>(1e6 / opt_.tokens_per_second));
        const auto id = fmt::format("cmpl-fake-{}", served);
        if (!stream) {
            std::string content;
            for (int i = 0; i < n; ++i) {
                if (!sleep_watching(ex, per_token)) {
                    ex.abort();
                    return;
                }
                ++decode_calls_;  // one decode per token, as llama-server counts them
                content += fmt::format(" tok{}", i);
            }
            if (opt_.echo_tags) {
                content = bracketed_tags(body->value("prompt", std::string()));
            }
            tokens_total_ += n;
            auto reply_body = final_object(shape, content, n, slot, id);
            if (opt_.bitnet && shape == Shape::native) {
                reply_body["truncated"] = cut_prompt;
                if (cut_prompt) {
                    std::fprintf(stderr, "slot update_slots: id %d | input truncated\n", slot);
                }
            }
            return reply(ex, 200, reply_body);
        }
        Headers h;
        h.add("Content-Type", "text/event-stream");
        h.add("X-Accel-Buffering", "no");
        h.add("Server", "fake-llama-server");
        ex.begin(200, h, std::nullopt);
        for (int i = 0; i < n; ++i) {
            if (stall_after >= 0 && i >= stall_after) {
                return wait_for_client_to_leave(ex);
            }
            if (!sleep_watching(ex, per_token)) {
                ex.abort();
                return;
            }
            ++decode_calls_;
            const auto piece = fmt::format(" tok{}", i);
            json event;
            if (shape == Shape::native) {
                event = {{"index", 0},    {"content", piece},          {"stop", false},
                         {"id_slot", -1}, {"tokens_predicted", i + 1}, {"tokens_evaluated", 2}};
            } else if (shape == Shape::openai_chat) {
                event = {{"id", id},
                         {"object", "chat.completion.chunk"},
                         {"model", opt_.model},
                         {"choices", json::array({{{"index", 0},
                                                   {"finish_reason", nullptr},
                                                   {"delta", {{"content", piece}}}}})}};
            } else {
                event = {
                    {"id", id},
                    {"object", "text_completion"},
                    {"model", opt_.model},
                    {"choices",
                     json::array({{{"index", 0}, {"finish_reason", nullptr}, {"text", piece}}})}};
            }
            if (opt_.stamp_events) {
                event["t_mono_ns"] = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                         std::chrono::steady_clock::now().time_since_epoch())
                                         .count();
            }
            if (!ex.write("data: " + event.dump() + "\n\n")) {
                return;
            }
            ++tokens_total_;
        }
        json last = final_object(shape, "", n, slot, id);
        if (shape == Shape::openai_chat) {
            last = {{"id", id},
                    {"object", "chat.completion.chunk"},
                    {"model", opt_.model},
                    {"choices",
                     json::array(
                         {{{"index", 0}, {"finish_reason", "length"}, {"delta", json::object()}}})},
                    {"usage",
                     {{"completion_tokens", n}, {"prompt_tokens", 2}, {"total_tokens", n + 2}}}};
        } else if (shape == Shape::openai_text) {
            last["choices"][0]["text"] = "";
        }
        ex.write("data: " + last.dump() + "\n\n");
        if (shape != Shape::native) {
            ex.write("data: [DONE]\n\n");
        }
        ex.finish();
    }

    json final_object(Shape shape, const std::string& content, int n, int slot,
                      const std::string& id) const {
        const json timings = {{"prompt_n", 2},
                              {"prompt_ms", 1.0},
                              {"predicted_n", n},
                              {"predicted_ms", n * 1000.0 / opt_.tokens_per_second},
                              {"predicted_per_second", opt_.tokens_per_second}};
        const json usage = {
            {"completion_tokens", n}, {"prompt_tokens", 2}, {"total_tokens", n + 2}};
        if (shape == Shape::native) {
            return {{"index", 0},
                    {"content", content},
                    {"id_slot", slot},
                    {"stop", true},
                    {"model", opt_.model},
                    {"tokens_predicted", n},
                    {"tokens_evaluated", 2},
                    {"stop_type", "limit"},
                    {"timings", timings}};
        }
        if (shape == Shape::openai_chat) {
            return {{"id", id},
                    {"object", "chat.completion"},
                    {"model", opt_.model},
                    {"choices",
                     json::array({{{"index", 0},
                                   {"finish_reason", "length"},
                                   {"message", {{"role", "assistant"}, {"content", content}}}}})},
                    {"usage", usage},
                    {"timings", timings}};
        }
        return {{"id", id},
                {"object", "text_completion"},
                {"model", opt_.model},
                {"choices",
                 json::array({{{"index", 0}, {"finish_reason", "length"}, {"text", content}}})},
                {"usage", usage},
                {"timings", timings}};
    }

    // Checks for a gone client every quarter of the wait, at least every 10 ms and at most every
    // 250 ms: a fixed 10 ms step cost 10,000 slow streams a million wake-ups a second, which
    // took the cores from the proxies the benchmarks measure.
    static bool sleep_watching(HttpExchange& ex, std::chrono::microseconds d) {
        using std::chrono::microseconds, std::chrono::milliseconds;
        const auto until = std::chrono::steady_clock::now() + d;
        const auto step = std::clamp<microseconds>(d / 4, milliseconds(10), milliseconds(250));
        while (std::chrono::steady_clock::now() < until) {
            if (ex.client_gone()) {
                return false;
            }
            std::this_thread::sleep_for(std::min<std::chrono::microseconds>(
                step, std::chrono::duration_cast<std::chrono::microseconds>(
                          until - std::chrono::steady_clock::now())));
        }
        return true;
    }

    Options opt_;
    Slots slots_;
    std::chrono::steady_clock::time_point started_;
    std::atomic<int> served_{0};
    std::atomic<long long> tokens_total_{0};
    std::atomic<long long> decode_calls_{0};
    std::mutex log_mutex_;
};

// llama-server's --api-key-file: one key per line, '#' starts a comment; the first is used.
std::string key_from_file(const std::string& path) {
    std::ifstream in(path);
    if (!in) {
        std::fprintf(stderr, "fake-llama-server: error: failed to open file '%s'\n", path.c_str());
        std::exit(1);
    }
    std::string line;
    while (std::getline(in, line)) {
        if (!line.empty() && line[0] != '#') {
            return line;
        }
    }
    return {};
}

}  // namespace

int main(int argc, char** argv) {
    Options o;
    std::vector<std::string> args(argv + 1, argv + argc);
    auto next = [&](std::size_t& i) -> std::string {
        if (i + 1 >= args.size()) {
            usage();
            std::exit(2);
        }
        return args[++i];
    };
    for (std::size_t i = 0; i < args.size(); ++i) {
        const auto& a = args[i];
        if (a == "--host")
            o.host = next(i);
        else if (a == "--port")
            o.port = std::stoi(next(i));
        else if (a == "--parallel" || a == "-np")
            o.slots = std::stoi(next(i));
        else if (a == "--max-connections")
            o.max_connections = std::stoi(next(i));
        else if (a == "--ctx-size" || a == "-c")
            o.ctx = std::stoi(next(i));
        else if (a == "--load-delay-ms")
            o.load_delay_ms = std::stoi(next(i));
        else if (a == "--latency-ms")
            o.latency_ms = std::stoi(next(i));
        else if (a == "--tokens-per-second")
            o.tokens_per_second = std::stod(next(i));
        else if (a == "--fail-status")
            o.fail_status = std::stoi(next(i));
        else if (a == "--fault-file")
            o.fault_file = next(i);
        else if (a == "--fail-after")
            o.fail_after = std::stoi(next(i));
        else if (a == "--hang")
            o.hang = true;
        else if (a == "--crash-after")
            o.crash_after = std::stoi(next(i));
        else if (a == "--stall-after-events")
            o.stall_after_events = std::stoi(next(i));
        else if (a == "--garbage")
            o.garbage = true;
        else if (a == "--echo-tags")
            o.echo_tags = true;
        else if (a == "--stamp-events")
            o.stamp_events = true;
        else if (a == "--api-key")
            o.api_key = next(i);
        else if (a == "--api-key-file")
            o.api_key = key_from_file(next(i));
        else if (a == "--log-requests")
            o.log_requests = next(i);
        else if (a == "--model" || a == "-m")
            o.model = next(i);
        else if (a == "--exit-at-start") {
            std::fprintf(stderr, "fake-llama-server: error: told to fail at start\n");
            return 1;
        } else if (a == "--threads" || a == "-t")
            next(i);
        else if (a == "--slots")
            o.slots_endpoint = true;
        else if (a == "--bitnet-dialect")
            o.bitnet = true;
        else if (a == "--refuse-slots")
            o.refuse_slots = true;
        else if (a == "--metrics") {
        } else if (a == "--help") {
            usage();
            return 0;
        } else if (a.rfind("--", 0) == 0 && i + 1 < args.size() && args[i + 1].rfind("-", 0) != 0) {
            std::fprintf(stderr, "fake-llama-server: ignoring %s %s\n", a.c_str(),
                         args[i + 1].c_str());
            ++i;
        } else {
            std::fprintf(stderr, "fake-llama-server: ignoring %s\n", a.c_str());
        }
    }
    if (o.slots < 1)
        o.slots = 1;
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    std::signal(SIGPIPE, SIG_IGN);

    FakeServer fake(o);
    HttpServerOptions options;
    options.host = o.host;
    options.port = static_cast<std::uint16_t>(o.port);
    options.max_connections = static_cast<std::size_t>(std::max(1, o.max_connections));
    // Its handlers block for a whole generation (a thread per request, as llama-server's HTTP
    // threads do), so it starts a thread at once for each: with the server's default, one
    // more every busy_grace (2 ms), it could take at most 500 new streams a second.
    options.eager_threads = options.max_connections;
    HttpServer server(options, [&](HttpExchange& ex) { fake.handle(ex); });
    std::string error;
    if (!server.start(error)) {
        std::fprintf(stderr, "fake-llama-server: error: %s\n", error.c_str());
        return 1;
    }
    std::fprintf(stderr, "fake-llama-server: listening on %s:%u\n", o.host.c_str(), server.port());
    std::fflush(stderr);
    int sig = 0;
    sigwait(&signals, &sig);
    server.abort();
    server.stop();
    return 0;
}
