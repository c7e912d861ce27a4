#pragma once

#include <optional>
#include <string_view>

namespace llama_pool {

// A file from proxy/console/assets/, built into the binary (embed_assets.cmake writes the
// table at build time, so the files stay plain HTML, CSS and JS to edit).
struct ConsoleAsset {
    std::string_view name;  // file name, e.g. "console.js"
    std::string_view content_type;
    std::string_view body;
};

std::optional<ConsoleAsset> find_console_asset(std::string_view name);

}  // namespace llama_pool
