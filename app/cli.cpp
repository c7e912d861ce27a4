#include "app/cli.hpp"

#include <cstdlib>

namespace llama_pool {

ConfigResult load_config_from_process(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    return load_config(args, [](const std::string& name) -> std::optional<std::string> {
        if (const char* v = std::getenv(name.c_str())) {
            return std::string(v);
        }
        return std::nullopt;
    });
}

}  // namespace llama_pool
