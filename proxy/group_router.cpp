#include "proxy/group_router.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "common/http_parser.hpp"

namespace llama_pool {

std::string_view to_string(GroupMatch match) {
    switch (match) {
        case GroupMatch::name:
            return "name";
        case GroupMatch::alias:
            return "alias";
        case GroupMatch::model_file:
            return "model_file";
        case GroupMatch::endpoint:
            return "endpoint";
        case GroupMatch::default_group:
            return "default";
    }
    return "default";
}

GroupRouter::GroupRouter(const std::vector<GroupConfig>& groups) {
    for (std::size_t i = 0; i < groups.size(); ++i) {
        const auto& g = groups[i];
        entries_.push_back({g.name, g.aliases, std::string(file_name_of(g.model)), g.endpoints});
        if (g.is_default && default_ == 0) {
            default_ = i;
        }
    }
}

std::optional<std::size_t> GroupRouter::find(std::string_view name) const {
    for (std::size_t i = 0; i < entries_.size(); ++i) {
        const auto& e = entries_[i];
        if (e.name == name ||
            std::find(e.aliases.begin(), e.aliases.end(), name) != e.aliases.end()) {
            return i;
        }
    }
    return std::nullopt;
}

GroupChoice GroupRouter::route(std::string_view model, std::string_view path) const {
    if (!model.empty()) {
        for (std::size_t i = 0; i < entries_.size(); ++i) {
            if (entries_[i].name == model) {
                return {i, GroupMatch::name};
            }
        }
        for (std::size_t i = 0; i < entries_.size(); ++i) {
            const auto& aliases = entries_[i].aliases;
            if (std::find(aliases.begin(), aliases.end(), model) != aliases.end()) {
                return {i, GroupMatch::alias};
            }
        }
        const auto file = file_name_of(model);
        for (std::size_t i = 0; i < entries_.size(); ++i) {
            if (!file.empty() && entries_[i].model_file == file) {
                return {i, GroupMatch::model_file};
            }
        }
    }
    for (std::size_t i = 0; i < entries_.size(); ++i) {
        const auto& endpoints = entries_[i].endpoints;
        if (std::find(endpoints.begin(), endpoints.end(), path) != endpoints.end()) {
            return {i, GroupMatch::endpoint};
        }
    }
    return {default_, GroupMatch::default_group};
}

namespace {

// Reads only as far as the top-level "model" key: a SAX pass that stops there, so a long
// prompt after it is never parsed and nothing is built in memory.
class ModelFinder final : public nlohmann::json::json_sax_t {
  public:
    std::string model;

    bool null() override { return value(); }
    bool boolean(bool) override { return value(); }
    bool number_integer(number_integer_t) override { return value(); }
    bool number_unsigned(number_unsigned_t) override { return value(); }
    bool number_float(number_float_t, const string_t&) override { return value(); }
    bool string(string_t& s) override {
        if (depth_ == 1 && model_key_) {
            model = s;
            return false;  // found: stop reading
        }
        return value();
    }
    bool binary(binary_t&) override { return value(); }
    bool start_object(std::size_t) override {
        model_key_ = false;
        ++depth_;
        return true;
    }
    bool key(string_t& k) override {
        model_key_ = depth_ == 1 && k == "model";
        return true;
    }
    bool end_object() override {
        --depth_;
        return depth_ > 0;  // the top-level object ended: nothing more to find
    }
    bool start_array(std::size_t) override {
        model_key_ = false;
        ++depth_;
        return depth_ > 1;  // a top-level array names no model
    }
    bool end_array() override {
        --depth_;
        return true;
    }
    bool parse_error(std::size_t, const std::string&, const nlohmann::json::exception&) override {
        return false;
    }

  private:
    bool value() {
        model_key_ = false;
        return true;
    }
    int depth_ = 0;
    bool model_key_ = false;
};

std::string percent_decode(std::string_view s) {
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '%' && i + 2 < s.size() && hex_digit_value(s[i + 1]) >= 0 &&
            hex_digit_value(s[i + 2]) >= 0) {
            out += static_cast<char>(hex_digit_value(s[i + 1]) * 16 + hex_digit_value(s[i + 2]));
            i += 2;
        } else {
            out += s[i] == '+' ? ' ' : s[i];
        }
    }
    return out;
}

}  // namespace

std::string requested_model(std::string_view body, std::string_view query) {
    // A body without the key spelled plainly names no model (a key spelled with \u escapes
    // is not looked for): most bodies are then not parsed at all.
    if (!body.empty() && body.find("\"model\"") != std::string_view::npos) {
        ModelFinder finder;
        nlohmann::json::sax_parse(body, &finder);
        if (!finder.model.empty()) {
            return finder.model;
        }
    }
    while (!query.empty()) {
        const auto amp = query.find('&');
        const auto pair = query.substr(0, amp);
        if (pair.rfind("model=", 0) == 0) {
            return percent_decode(pair.substr(6));
        }
        query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    }
    return {};
}

}  // namespace llama_pool
