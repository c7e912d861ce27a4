#include "workloads/summarize_request.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <string_view>

namespace llama_pool {

namespace {

using nlohmann::json;

enum class Kind { number, integer, boolean, string, string_list };

struct SamplingField {
    std::string_view name;
    Kind kind;
};

// Passed to the workers as given; llama-server checks their ranges. Anything else is refused
// so that a typo ("temprature") is an error, not a silently ignored setting.
constexpr std::array<SamplingField, 16> kSampling = {{
    {"temperature", Kind::number},
    {"top_p", Kind::number},
    {"top_k", Kind::integer},
    {"min_p", Kind::number},
    {"typical_p", Kind::number},
    {"seed", Kind::integer},
    {"repeat_penalty", Kind::number},
    {"repeat_last_n", Kind::integer},
    {"presence_penalty", Kind::number},
    {"frequency_penalty", Kind::number},
    {"stop", Kind::string_list},
    {"ignore_eos", Kind::boolean},
    {"cache_prompt", Kind::boolean},
    {"model", Kind::string},
    {"n_predict", Kind::integer},
    {"max_tokens", Kind::integer},
}};

constexpr std::array<std::string_view, 7> kOwnFields = {
    "text", "topic", "max_chunk_chars", "overlap", "levels", "prompts", "type",
};

const char* kind_name(Kind kind) {
    switch (kind) {
        case Kind::number:
            return "a number";
        case Kind::integer:
            return "an integer";
        case Kind::boolean:
            return "true or false";
        case Kind::string:
            return "a string";
        case Kind::string_list:
            return "an array of strings";
    }
    return "";
}

bool has_kind(const json& value, Kind kind) {
    switch (kind) {
        case Kind::number:
            return value.is_number();
        case Kind::integer:
            return value.is_number_integer();
        case Kind::boolean:
            return value.is_boolean();
        case Kind::string:
            return value.is_string();
        case Kind::string_list:
            return value.is_array() && std::all_of(value.begin(), value.end(),
                                                   [](const json& v) { return v.is_string(); });
    }
    return false;
}

std::string accepted_fields(bool job) {
    std::string out;
    for (const auto f : kOwnFields) {
        if (f == "type" && !job) {
            continue;
        }
        out += out.empty() ? "" : ", ";
        out += f;
    }
    for (const auto& f : kSampling) {
        out += ", ";
        out += f.name;
    }
    return out;
}

bool read_size(const json& body, const char* name, std::size_t min, std::size_t max,
               std::size_t& out, std::string& error) {
    const auto it = body.find(name);
    if (it == body.end()) {
        return true;
    }
    if (!it->is_number_integer() || it->get<long long>() < static_cast<long long>(min) ||
        it->get<long long>() > static_cast<long long>(max)) {
        error = fmt::format("\"{}\" must be an integer from {} to {}, not {}", name, min, max,
                            it->dump());
        return false;
    }
    out = it->get<std::size_t>();
    return true;
}

bool read_prompt(const json& prompts, const char* name, std::string& out, std::string& error) {
    const auto it = prompts.find(name);
    if (it == prompts.end()) {
        return true;
    }
    if (!it->is_string() || it->get<std::string>().find("{text}") == std::string::npos) {
        error = fmt::format("\"prompts.{}\" must be a string containing {{text}}", name);
        return false;
    }
    out = it->get<std::string>();
    return true;
}

}  // namespace

std::string default_map_prompt() {
    return "Summarize the following text in a few sentences, focusing on {topic}. Keep the "
           "names, numbers and conclusions it states and add nothing it does not say.\n\n"
           "Text:\n{text}\n\nSummary:";
}

std::string default_reduce_prompt() {
    return "These are summaries of consecutive parts of one document. Merge them into one "
           "coherent summary, focusing on {topic}. Keep the names, numbers and conclusions, "
           "drop repetitions and add nothing new.\n\nSummaries:\n{text}\n\nCombined summary:";
}

std::string render_prompt(const std::string& prompt, const std::string& text,
                          const std::string& topic) {
    std::string out;
    out.reserve(prompt.size() + text.size());
    std::size_t pos = 0;
    while (pos < prompt.size()) {
        if (prompt.compare(pos, 6, "{text}") == 0) {
            out += text;
            pos += 6;
        } else if (prompt.compare(pos, 7, "{topic}") == 0) {
            out += topic.empty() ? "its main points" : topic;
            pos += 7;
        } else {
            out += prompt[pos++];
        }
    }
    return out;
}

json request_to_json(const SummarizeRequest& request) {
    json out = {{"text", request.text},
                {"topic", request.topic},
                {"max_chunk_chars", request.chunking.max_chars},
                {"overlap", request.chunking.overlap},
                {"levels", request.levels},
                {"map_prompt", request.map_prompt},
                {"reduce_prompt", request.reduce_prompt},
                {"sampling", request.sampling}};
    if (request.n_predict) {
        out["n_predict"] = *request.n_predict;
    }
    return out;
}

bool request_from_json(const json& saved, SummarizeRequest& out, std::string& error) {
    out = SummarizeRequest{};
    try {
        out.text = saved.at("text").get<std::string>();
        out.topic = saved.at("topic").get<std::string>();
        out.chunking.max_chars = saved.at("max_chunk_chars").get<std::size_t>();
        out.chunking.overlap = saved.at("overlap").get<std::size_t>();
        out.levels = saved.at("levels").get<int>();
        out.map_prompt = saved.at("map_prompt").get<std::string>();
        out.reduce_prompt = saved.at("reduce_prompt").get<std::string>();
        out.sampling = saved.at("sampling");
        if (const auto n = saved.find("n_predict"); n != saved.end()) {
            out.n_predict = n->get<int>();
        }
    } catch (const json::exception& e) {
        error = fmt::format("its saved request is incomplete ({})", e.what());
        return false;
    }
    if (!out.sampling.is_object() || out.chunking.max_chars == 0 || out.levels < 1) {
        error = "its saved request has invalid settings";
        return false;
    }
    return true;
}

int summary_tokens_for(std::size_t chars) {
    return static_cast<int>(std::max<std::size_t>(32, chars * 3 / 40));
}

bool parse_summarize_request(const json& body, const SummarizeDefaults& defaults, bool job,
                             SummarizeRequest& out, std::string& error) {
    if (!body.is_object()) {
        error = "the body must be a JSON object";
        return false;
    }
    out = SummarizeRequest{};
    for (const auto& item : body.items()) {
        const auto& name = item.key();
        const auto& value = item.value();
        const bool own =
            std::find(kOwnFields.begin(), kOwnFields.end(), name) != kOwnFields.end() &&
            (job || name != "type");
        const auto sampling = std::find_if(kSampling.begin(), kSampling.end(),
                                           [&](const SamplingField& f) { return f.name == name; });
        if (sampling != kSampling.end()) {
            if (!has_kind(value, sampling->kind)) {
                error = fmt::format("\"{}\" must be {}, not {}", name, kind_name(sampling->kind),
                                    value.dump());
                return false;
            }
            out.sampling[name] = value;
        } else if (!own) {
            error = fmt::format("unknown field \"{}\"; accepted: {}", name, accepted_fields(job));
            return false;
        }
    }
    if (job) {
        const auto type = body.find("type");
        if (type == body.end() || !type->is_string() || *type != "summarize") {
            error = "\"type\" must be \"summarize\" (the only job type)";
            return false;
        }
    }
    const auto text = body.find("text");
    if (text == body.end() || !text->is_string()) {
        error = "\"text\" must be given, as a string";
        return false;
    }
    out.text = text->get<std::string>();
    const auto chars = count_chars(out.text);
    if (out.text.find_first_not_of(" \t\r\n") == std::string::npos) {
        error = "\"text\" is empty; there is nothing to summarize";
        return false;
    }
    if (chars > defaults.max_text_chars) {
        error = fmt::format(
            "\"text\" has {} characters, more than this pool accepts ({}, "
            "summarize.max_text_chars)",
            chars, defaults.max_text_chars);
        return false;
    }
    if (const auto topic = body.find("topic"); topic != body.end()) {
        if (!topic->is_string() || topic->get<std::string>().size() > 1000) {
            error = "\"topic\" must be a string of at most 1000 bytes";
            return false;
        }
        out.topic = topic->get<std::string>();
    }
    out.chunking.max_chars = defaults.max_chunk_chars;
    out.chunking.overlap = defaults.overlap;
    if (!read_size(body, "max_chunk_chars", 200, 1'000'000, out.chunking.max_chars, error) ||
        !read_size(body, "overlap", 0, 1'000'000, out.chunking.overlap, error)) {
        return false;
    }
    if (out.chunking.overlap > out.chunking.max_chars / 2) {
        error = fmt::format("\"overlap\" ({}) must be at most half of max_chunk_chars ({})",
                            out.chunking.overlap, out.chunking.max_chars);
        return false;
    }
    std::size_t levels = static_cast<std::size_t>(defaults.levels);
    if (!read_size(body, "levels", 1, 10, levels, error)) {
        return false;
    }
    out.levels = static_cast<int>(levels);
    out.map_prompt = defaults.map_prompt.empty() ? default_map_prompt() : defaults.map_prompt;
    out.reduce_prompt =
        defaults.reduce_prompt.empty() ? default_reduce_prompt() : defaults.reduce_prompt;
    if (const auto prompts = body.find("prompts"); prompts != body.end()) {
        if (!prompts->is_object()) {
            error = "\"prompts\" must be an object with \"map\" and/or \"reduce\"";
            return false;
        }
        for (const auto& [name, value] : prompts->items()) {
            (void)value;
            if (name != "map" && name != "reduce") {
                error = fmt::format("unknown field \"prompts.{}\"; accepted: map, reduce", name);
                return false;
            }
        }
        if (!read_prompt(*prompts, "map", out.map_prompt, error) ||
            !read_prompt(*prompts, "reduce", out.reduce_prompt, error)) {
            return false;
        }
    }
    for (const char* name : {"n_predict", "max_tokens"}) {
        if (const auto it = out.sampling.find(name); it != out.sampling.end()) {
            const auto n = it->get<long long>();
            if (n < 1 || n > 100'000) {
                error = fmt::format("\"{}\" must be from 1 to 100000, not {}", name, n);
                return false;
            }
            out.n_predict = static_cast<int>(n);
            out.sampling.erase(it);
        }
    }
    return true;
}

}  // namespace llama_pool
