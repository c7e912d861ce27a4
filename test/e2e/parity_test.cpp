// The same requests sent straight to a real llama-server and through the pool must give
// the same status, content type and body shape (sampled values aside).
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <set>

#include "common/socket.hpp"
#include "test/support/pool_fixture.hpp"
#include "test/support/real_worker.hpp"

using namespace llama_pool::test;
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

struct Reply {
    int status = 0;
    std::string content_type;
    std::string body;
};

Reply send(std::uint16_t port, const std::string& method, const std::string& path,
           const std::string& body) {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(60s);
    httplib::Result r =
        method == "GET" ? c.Get(path.c_str()) : c.Post(path.c_str(), body, "application/json");
    REQUIRE(r);
    const auto ct = r->get_header_value("Content-Type");
    return {r->status, ct.substr(0, ct.find(';')), r->body};
}

std::set<std::string> keys(const json& j) {
    std::set<std::string> out;
    if (j.is_object()) {
        for (const auto& [k, v] : j.items()) {
            out.insert(k);
        }
    }
    return out;
}

// SSE events as parsed JSON, plus whether the stream ended with [DONE].
std::vector<json> sse_events(const std::string& body, bool& done) {
    std::vector<json> events;
    done = false;
    std::size_t pos = 0;
    while ((pos = body.find("data: ", pos)) != std::string::npos) {
        const auto end = body.find("\n\n", pos);
        const auto payload = body.substr(pos + 6, end - pos - 6);
        if (payload == "[DONE]") {
            done = true;
        } else {
            events.push_back(json::parse(payload));
        }
        pos = end == std::string::npos ? body.size() : end + 2;
    }
    return events;
}

}  // namespace

TEST_CASE("the pool answers like the real llama-server it fronts", "[e2e]") {
    const auto direct_port = free_port();
    TestProcess direct(
        real_server_path(),
        {"--model", real_model_path(), "--host", "127.0.0.1", "--port", std::to_string(direct_port),
         "--ctx-size", "2048", "--parallel", "2", "--threads", "1", "--metrics", "--slots"});
    PoolProcess pool(real_pool_args(1, {"--threads", "1"}));
    REQUIRE(wait_until(
        [&] {
            httplib::Client c("127.0.0.1", direct_port);
            const auto r = c.Get("/health");
            return r && r->status == 200;
        },
        60s));
    REQUIRE(pool.wait_ready(1, 60s));

    const std::string long_prompt(9000, 'x');
    struct Case {
        std::string name, method, path, body;
        bool stream = false;
    };
    // ignore_eos: the random-weight model may sample end-of-sequence at any point, and the
    // two sides must produce the same number of events.
    const std::vector<Case> cases = {
        {"completion", "POST", "/completion",
         R"({"prompt":"Hello","n_predict":4,"ignore_eos":true})"},
        {"completion stream", "POST", "/completion",
         R"({"prompt":"Hello","n_predict":4,"stream":true,"ignore_eos":true})", true},
        {"v1 completions", "POST", "/v1/completions",
         R"({"prompt":"Hello","max_tokens":4,"ignore_eos":true})"},
        {"v1 completions stream", "POST", "/v1/completions",
         R"({"prompt":"Hello","max_tokens":4,"stream":true,"ignore_eos":true})", true},
        {"chat", "POST", "/v1/chat/completions",
         R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":4,"ignore_eos":true})"},
        {"chat stream", "POST", "/v1/chat/completions",
         R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":4,"stream":true,"ignore_eos":true})",
         true},
        {"tokenize", "POST", "/tokenize", R"({"content":"Hello world"})"},
        {"detokenize", "POST", "/detokenize", R"({"tokens":[15043,3186]})"},
        {"models", "GET", "/v1/models", ""},
        {"malformed JSON", "POST", "/completion", "{bad json"},
        {"missing prompt", "POST", "/completion", R"({"n_predict":2})"},
        {"context exceeded", "POST", "/completion",
         R"({"prompt":")" + long_prompt + R"(","n_predict":2})"},
        {"context exceeded stream", "POST", "/completion",
         R"({"prompt":")" + long_prompt + R"(","n_predict":2,"stream":true})"},
        {"unknown path", "GET", "/no/such/path", ""},
    };
    for (const auto& tc : cases) {
        SECTION(tc.name) {
            const auto d = send(direct_port, tc.method, tc.path, tc.body);
            const auto p = send(pool.port(), tc.method, tc.path, tc.body);
            INFO("direct: " << d.body.substr(0, 300));
            INFO("pool:   " << p.body.substr(0, 300));
            CHECK(p.status == d.status);
            CHECK(p.content_type == d.content_type);
            if (tc.stream) {
                bool d_done = false, p_done = false;
                const auto de = sse_events(d.body, d_done);
                const auto pe = sse_events(p.body, p_done);
                REQUIRE(de.size() >= 2);
                REQUIRE(pe.size() == de.size());
                CHECK(keys(pe.front()) == keys(de.front()));
                CHECK(keys(pe.back()) == keys(de.back()));
                CHECK(p_done == d_done);
                CHECK(p_done == (tc.path != "/completion"));
            } else {
                const auto dj = json::parse(d.body);
                const auto pj = json::parse(p.body);
                CHECK(keys(pj) == keys(dj));
                if (dj.contains("error")) {
                    CHECK(pj["error"]["type"] == dj["error"]["type"]);
                    CHECK(pj["error"]["code"] == dj["error"]["code"]);
                }
            }
        }
    }
    SECTION("props") {
        const auto d = json::parse(send(direct_port, "GET", "/props", "").body);
        const auto p = json::parse(send(pool.port(), "GET", "/props", "").body);
        for (const auto& k : keys(d)) {
            CHECK(p.contains(k));
        }
        CHECK(p["total_slots"] == d["total_slots"]);
    }
}

TEST_CASE("the n8n node's calls, replayed as it sends them, get 2xx and the fields it reads",
          "[e2e]") {
    PoolProcess pool(real_pool_args(
        2, {"--worker-arg", "--embeddings", "--worker-arg", "--pooling", "--worker-arg", "mean"}));
    REQUIRE(pool.wait_ready(2, 60s));
    // A new connection per request, Connection: close, and a chunked body, as the node does.
    auto call = [&](const std::string& method, const std::string& path, const std::string& body) {
        std::string req =
            method + " " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n";
        if (!body.empty()) {
            std::string chunked;
            for (std::size_t i = 0; i < body.size(); i += 40) {
                const auto piece = body.substr(i, 40);
                char size[16];
                std::snprintf(size, sizeof size, "%zx\r\n", piece.size());
                chunked += size + piece + "\r\n";
            }
            req += "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" +
                   chunked + "0\r\n\r\n";
        } else {
            req += "\r\n";
        }
        const auto raw = raw_exchange(pool.port(), req, 120s);
        const auto body_start = raw.find("\r\n\r\n");
        REQUIRE(body_start != std::string::npos);
        return std::make_pair(raw_status(raw), raw.substr(body_start + 4));
    };
    const auto model = real_model_path();
    {
        const auto [status, body] = call(
            "POST", "/completion",
            R"({"prompt":"Summarize this.","temperature":0.7,"max_tokens":8,"top_p":0.9,"top_k":40,"stream":false,"model":")" +
                model +
                R"(","stop":["\n\n"],"n_threads":4,"n_gpu_layers":0,"n_ctx":4096,"n_batch":512})");
        CHECK(status == 200);
        const auto j = json::parse(body);
        CHECK(j["content"].is_string());
        CHECK(j.contains("model"));
        // The node's own body has no ignore_eos, and the random model may stop at once: the
        // node needs the field, not a particular count.
        CHECK(j["tokens_predicted"].is_number_integer());
        CHECK(j.contains("timings"));
    }
    {
        const auto [status, body] = call(
            "POST", "/v1/chat/completions",
            R"({"messages":[{"role":"system","content":"You are helpful."},{"role":"user","content":"Hi"}],"temperature":0.7,"max_tokens":8,"top_p":0.9,"top_k":40,"stream":false})");
        CHECK(status == 200);
        const auto j = json::parse(body);
        CHECK(j["choices"][0]["message"]["content"].is_string());
        CHECK(j["choices"][0]["message"]["role"] == "assistant");
        CHECK(j["choices"][0].contains("finish_reason"));
        CHECK(j.contains("model"));
        CHECK(j.contains("usage"));
    }
    {
        const auto [status, body] =
            call("POST", "/v1/embeddings", R"({"model":")" + model + R"(","input":"some text"})");
        CHECK(status == 200);
        CHECK(json::parse(body)["data"][0]["embedding"].size() > 0);
    }
    {
        const auto [status, body] = call("POST", "/tokenize", R"({"content":"Hello world"})");
        CHECK(status == 200);
        CHECK(json::parse(body)["tokens"].size() > 0);
    }
    {
        const auto [status, body] = call("GET", "/health", "");
        CHECK(status == 200);
        CHECK(json::parse(body)["status"] == "ok");
    }
    {
        const auto [status, body] = call("GET", "/", "");
        CHECK(status == 200);
    }
}

TEST_CASE("a client that disconnects mid-stream cancels its generation and frees the slot",
          "[e2e]") {
    PoolProcess pool(real_pool_args(1, {"--ctx-size", "16384", "--parallel", "1"}));
    REQUIRE(pool.wait_ready(1, 60s));
    auto slot = [&] {
        const auto r = pool.client(5s).Get("/slots");
        REQUIRE(r);
        const auto slots = json::parse(r->body);
        REQUIRE(slots.size() == 1);
        return slots[0];
    };
    auto busy = [&] { return slot()["is_processing"].get<bool>(); };
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    std::string error;
    auto fd = llama_pool::connect_tcp("127.0.0.1", pool.port(), deadline, error);
    REQUIRE(fd.valid());
    const std::string body =
        R"({"prompt":"Once","n_predict":15000,"ignore_eos":true,"stream":true})";
    llama_pool::write_all(
        fd.get(),
        "POST /completion HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: " +
            std::to_string(body.size()) + "\r\n\r\n" + body,
        deadline);
    std::string got;
    char buf[4096];
    std::size_t n = 0;
    while (got.find("data: ") == std::string::npos &&
           llama_pool::read_some(fd.get(), buf, sizeof buf, n, deadline) ==
               llama_pool::IoStatus::ok) {
        got.append(buf, n);
    }
    REQUIRE(got.find("data: ") != std::string::npos);
    REQUIRE(busy());
    fd.reset();  // the client goes away mid-stream
    const auto closed_at = std::chrono::steady_clock::now();
    // Left alone, the generation runs until the context is full. The worker's count of
    // predicted tokens (flushed when the slot is released, re-exported on our /metrics) shows
    // that it stopped far short of that, so the disconnect cancelled it. How fast that
    // happens is printed, not asserted: it varies with the machine's load.
    REQUIRE(wait_until([&] { return !busy(); }, 60s, 10ms));
    const auto freed_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                              std::chrono::steady_clock::now() - closed_at)
                              .count();
    std::printf("measured: slot freed %lld ms after the client disconnected\n",
                static_cast<long long>(freed_ms));
    const auto n_ctx = slot()["n_ctx"].get<long>();
    const auto metrics = pool.client(5s).Get("/metrics");
    REQUIRE(metrics);
    const std::string series = "llamacpp_tokens_predicted_total{worker=\"0\"} ";
    const auto at = metrics->body.find("\n" + series);
    REQUIRE(at != std::string::npos);
    const auto predicted = std::stod(metrics->body.substr(at + 1 + series.size()));
    std::printf("measured: %.0f tokens predicted before the cancel, context %ld\n", predicted,
                n_ctx);
    CHECK(predicted > 0);
    CHECK(predicted < n_ctx / 2.0);
}
