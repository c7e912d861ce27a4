// Model groups on REAL llama-server workers: a chat group and an embeddings group
// (--embeddings --pooling mean) behind one URL, serving every call the n8n node makes.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "test/support/pool_fixture.hpp"
#include "test/support/real_worker.hpp"

using namespace llama_pool::test;
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

// The demo model under a second file name, so the embeddings group can be picked by the
// file name at the end of a model path, as the n8n node sends it.
struct ModelLinks {
    TempDir dir;
    ModelLinks() {
        std::filesystem::create_symlink(real_model_path(), dir.file("embed-model.gguf"));
        json doc;
        doc["workers"] = {{"llama_server", real_server_path()}, {"ctx_size", 2048}};
        doc["groups"] = json::array(
            {{{"name", "chat"}, {"model", real_model_path()}, {"workers", 1}, {"parallel", 2}},
             {{"name", "embed"},
              {"model", dir.file("embed-model.gguf")},
              {"workers", 1},
              {"parallel", 1},
              {"endpoints", {"/v1/embeddings", "/embeddings", "/embedding"}},
              {"args", {"--embeddings", "--pooling", "mean"}}}});
        std::ofstream(dir.file("pool.json")) << doc.dump(2);
    }
};

}  // namespace

TEST_CASE("groups e2e: chat and embeddings from one URL, every call the n8n node makes",
          "[e2e][groups]") {
    ModelLinks links;
    PoolProcess pool({"--config", links.dir.file("pool.json")});
    REQUIRE(pool.wait_ready(2, 180s));
    auto c = pool.client();

    // GET / and GET /health: 2xx, and /health's body says ok.
    const auto root = c.Get("/");
    REQUIRE(root);
    CHECK(root->status == 200);
    const auto health = c.Get("/health");
    REQUIRE(health);
    CHECK(health->status == 200);
    CHECK(json::parse(health->body)["status"] == "ok");

    // Completion and chat with the node's body (a model path among unknown fields).
    const json completion = {{"prompt", "Hello"},
                             {"temperature", 0.7},
                             {"max_tokens", 8},
                             {"top_p", 0.9},
                             {"top_k", 40},
                             {"stream", false},
                             {"model", "models/x/y.gguf"},
                             {"n_threads", 4}};
    auto r = c.Post("/completion", completion.dump(), "application/json");
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(json::parse(r->body).contains("content"));
    json chat = completion;
    chat.erase("prompt");
    chat["messages"] = {{{"role", "system"}, {"content", "Be brief."}},
                        {{"role", "user"}, {"content", "Hi"}}};
    r = c.Post("/v1/chat/completions", chat.dump(), "application/json");
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(json::parse(r->body)["choices"][0]["message"]["role"] == "assistant");

    // Embeddings: by the endpoint (no model), by the group's name, and by the model path's
    // file name: every time the embeddings worker answers (the chat worker would say 501).
    for (const auto& body :
         {json{{"input", "hello world"}}, json{{"model", "embed"}, {"input", "hello world"}},
          json{{"model", "models/embed-model.gguf"}, {"input", "hello"}}}) {
        INFO(body.dump());
        r = c.Post("/v1/embeddings", body.dump(), "application/json");
        REQUIRE(r);
        REQUIRE(r->status == 200);
        const auto doc = json::parse(r->body);
        CHECK(doc["data"][0]["embedding"].size() > 0);
    }
    // The chat group itself serves no embeddings: naming it gets the worker's own 501.
    r = c.Post("/v1/embeddings", json{{"model", "chat"}, {"input", "x"}}.dump(),
               "application/json");
    REQUIRE(r);
    CHECK(r->status == 501);

    // Tokenize goes to the default (chat) group.
    r = c.Post("/tokenize", R"({"content":"hello world"})", "application/json");
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(json::parse(r->body)["tokens"].size() > 0);

    // Both groups listed; both running.
    const auto models = json::parse(c.Get("/v1/models")->body);
    REQUIRE(models["data"].size() == 2);
    CHECK(models["data"][1]["id"] == "embed");
    CHECK(models["data"][1]["running"] == true);

    const auto pids = pool.worker_pids();
    REQUIRE(pids.size() == 2);
    pool.process().signal(SIGTERM);
    CHECK(pool.process().wait_exit(30s) == 0);
    for (const auto pid : pids) {
        CHECK_FALSE(process_alive(pid));
    }
}
