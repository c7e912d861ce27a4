#pragma once

#include <string>
#include <vector>

namespace llama_pool::test {

// The real llama-server and demo model that `make test` provides; the test fails (not skips)
// when they are missing, since without them an end-to-end test proves nothing.
std::string real_server_path();
std::string real_model_path();

// Pool arguments for `workers` real workers on the demo model, plus `extra`.
std::vector<std::string> real_pool_args(int workers, std::vector<std::string> extra = {});

}  // namespace llama_pool::test
