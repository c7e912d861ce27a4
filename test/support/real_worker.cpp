#include "test/support/real_worker.hpp"

#include <catch2/catch.hpp>

#include "test/support/test_process.hpp"

namespace llama_pool::test {

std::string real_server_path() {
    const auto path = env_or_empty("LLAMA_POOL_TEST_SERVER");
    INFO("LLAMA_POOL_TEST_SERVER must name a llama-server binary (make test sets it)");
    REQUIRE_FALSE(path.empty());
    return path;
}

std::string real_model_path() {
    const auto path = env_or_empty("LLAMA_POOL_TEST_MODEL");
    INFO("LLAMA_POOL_TEST_MODEL must name a GGUF model (make test sets it)");
    REQUIRE_FALSE(path.empty());
    return path;
}

std::vector<std::string> real_pool_args(int workers, std::vector<std::string> extra) {
    std::vector<std::string> args = {"--workers",      std::to_string(workers),
                                     "--llama-server", real_server_path(),
                                     "--model",        real_model_path(),
                                     "--ctx-size",     "2048",
                                     "--parallel",     "2"};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
}

}  // namespace llama_pool::test
