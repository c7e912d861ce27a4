#include "proxy/inbound_auth.hpp"

#include <fstream>

#include "common/credentials.hpp"

namespace llama_pool {

std::optional<std::string> InboundAuth::check(const Headers& headers) const {
    const auto presented = presented_key(headers);
    if (!presented) {
        return std::nullopt;
    }
    std::optional<std::string> match;
    for (const auto& key : keys_) {
        if (constant_time_equals(*presented, key) && !match) {
            match = key;
        }
    }
    return match;
}

bool load_key_file(const std::string& path, std::vector<std::string>& keys, std::string& error) {
    std::ifstream in(path);
    if (!in) {
        error = "cannot read API key file " + path;
        return false;
    }
    std::string line;
    while (std::getline(in, line)) {
        const auto first = line.find_first_not_of(" \t\r");
        if (first == std::string::npos || line[first] == '#') {
            continue;
        }
        const auto last = line.find_last_not_of(" \t\r");
        keys.push_back(line.substr(first, last - first + 1));
    }
    return true;
}

}  // namespace llama_pool
