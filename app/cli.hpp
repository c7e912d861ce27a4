#pragma once

#include <string>
#include <vector>

#include "common/config.hpp"

namespace llama_pool {

// Loads the configuration from argv and the process environment.
ConfigResult load_config_from_process(int argc, char** argv);

}  // namespace llama_pool
