#include "proxy/affinity.hpp"

#include <algorithm>
#include <numeric>

namespace llama_pool {

namespace {

constexpr std::uint64_t kFnvOffset = 14695981039346656037ULL;
constexpr std::uint64_t kFnvPrime = 1099511628211ULL;

std::uint64_t fnv1a(std::string_view bytes) {
    std::uint64_t h = kFnvOffset;
    for (const char c : bytes) {
        h ^= static_cast<unsigned char>(c);
        h *= kFnvPrime;
    }
    return h;
}

// splitmix64's finalizer: every input bit flips about half the output bits, which FNV alone
// does not do for ids that differ only in their last character ("w0", "w1").
std::uint64_t mix64(std::uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

// The text of a chat message's content: a plain string, or the text parts of an array of
// parts (images and audio have no text to share).
void append_content(const nlohmann::json& content, std::string& out) {
    if (content.is_string()) {
        out += content.get_ref<const std::string&>();
        return;
    }
    if (!content.is_array()) {
        return;
    }
    for (const auto& part : content) {
        if (part.is_string()) {
            out += part.get_ref<const std::string&>();
        } else if (part.is_object()) {
            const auto text = part.find("text");
            if (text != part.end() && text->is_string()) {
                out += text->get_ref<const std::string&>();
            }
        }
    }
}

}  // namespace

std::string prompt_text(const nlohmann::json& body) {
    if (!body.is_object()) {
        return {};
    }
    if (const auto prompt = body.find("prompt"); prompt != body.end()) {
        if (prompt->is_string()) {
            return prompt->get<std::string>();
        }
        if (prompt->is_array() && !prompt->empty() && prompt->front().is_string()) {
            return prompt->front().get<std::string>();
        }
    }
    const auto messages = body.find("messages");
    if (messages == body.end() || !messages->is_array()) {
        return {};
    }
    // Role and content in order, each closed by a newline, so that two conversations that
    // share their first messages share a prefix here too, as they do in the rendered prompt.
    std::string text;
    for (const auto& message : *messages) {
        if (!message.is_object()) {
            continue;
        }
        if (const auto role = message.find("role"); role != message.end() && role->is_string()) {
            text += role->get_ref<const std::string&>();
        }
        text += '\n';
        if (const auto content = message.find("content"); content != message.end()) {
            append_content(*content, text);
        }
        text += '\n';
    }
    return text;
}

bool json_nesting_at_most(std::string_view text, std::size_t max_depth) {
    std::size_t depth = 0;
    bool in_string = false;
    bool escaped = false;
    for (const char c : text) {
        if (in_string) {
            if (escaped) {
                escaped = false;
            } else if (c == '\\') {
                escaped = true;
            } else if (c == '"') {
                in_string = false;
            }
            continue;
        }
        switch (c) {
            case '"':
                in_string = true;
                break;
            case '[':
            case '{':
                if (++depth > max_depth) {
                    return false;
                }
                break;
            case ']':
            case '}':
                depth = depth > 0 ? depth - 1 : 0;
                break;
            default:
                break;
        }
    }
    return true;
}

std::uint64_t affinity_key(std::string_view text, std::size_t prefix_chars) {
    const auto prefix = text.substr(0, std::min(prefix_chars, text.size()));
    if (prefix.empty()) {
        return 0;
    }
    return fnv1a(prefix);
}

std::vector<std::size_t> rendezvous_order(std::uint64_t key,
                                          const std::vector<std::string>& worker_ids) {
    // A worker's score depends only on the key and its own id, so adding or removing a
    // worker leaves the relative order of the others unchanged.
    std::vector<std::uint64_t> scores;
    scores.reserve(worker_ids.size());
    for (const auto& id : worker_ids) {
        scores.push_back(mix64(key ^ mix64(fnv1a(id))));
    }
    std::vector<std::size_t> order(worker_ids.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    // Ties (only duplicate ids, in practice) fall back to the input order: deterministic.
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        return scores[a] != scores[b] ? scores[a] > scores[b] : a < b;
    });
    return order;
}

}  // namespace llama_pool
