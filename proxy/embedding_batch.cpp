#include "proxy/embedding_batch.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <numeric>

namespace llama_pool {

namespace {

// Keeps the fields in the order the worker wrote them, so the merged reply reads like one.
using ordered = nlohmann::ordered_json;

bool is_success(int status) {
    return status >= 200 && status < 300;
}

// The embeddings of one reply, with indices relative to its slice; empty with `error` when
// the reply is not a well-formed embeddings reply for `expected` inputs.
struct Parsed {
    bool native = false;  // an array at the top (the /embedding form)
    ordered doc;
    std::vector<ordered> items;  // by their index within the slice
};

EmbeddingMergeError parse_reply(const std::string& body, std::size_t expected, Parsed& out) {
    out.doc = ordered::parse(body, nullptr, false);
    const ordered* list = nullptr;
    if (out.doc.is_array()) {
        out.native = true;
        list = &out.doc;
    } else if (out.doc.is_object() && out.doc.contains("data") && out.doc["data"].is_array()) {
        list = &out.doc["data"];
    } else {
        return EmbeddingMergeError::malformed;
    }
    if (list->size() != expected) {
        return EmbeddingMergeError::count_mismatch;
    }
    out.items.assign(expected, ordered());
    for (const auto& item : *list) {
        if (!item.is_object() || !item.contains("index") || !item["index"].is_number_unsigned()) {
            return EmbeddingMergeError::index_mismatch;
        }
        const auto index = item["index"].get<std::size_t>();
        if (index >= expected || !out.items[index].is_null()) {
            return EmbeddingMergeError::index_mismatch;
        }
        out.items[index] = item;
    }
    return EmbeddingMergeError::none;
}

// usage's counts added up; other fields as the first slice gave them.
void add_usage(ordered& total, const ordered& usage) {
    if (!usage.is_object()) {
        return;
    }
    if (!total.is_object()) {
        total = usage;
        return;
    }
    for (const auto& [name, value] : usage.items()) {
        if (value.is_number_integer() && total.contains(name) && total[name].is_number_integer()) {
            total[name] = total[name].get<long long>() + value.get<long long>();
        }
    }
}

std::string message_for(EmbeddingMergeError error, std::size_t slice, const EmbeddingSlice& s) {
    return fmt::format(
        "the workers' embeddings could not be put together: the reply for inputs {} to {} "
        "(slice {}) {}",
        s.begin, s.end - 1, slice + 1,
        error == EmbeddingMergeError::no_reply         ? "never came"
        : error == EmbeddingMergeError::malformed      ? "is not an embeddings reply"
        : error == EmbeddingMergeError::count_mismatch ? "has a different number of embeddings"
        : error == EmbeddingMergeError::index_mismatch ? "has missing or repeated indices"
                                                       : "has another shape than the others");
}

}  // namespace

std::string_view to_string(EmbeddingMergeError error) {
    switch (error) {
        case EmbeddingMergeError::none:
            return "none";
        case EmbeddingMergeError::slice_failed:
            return "slice_failed";
        case EmbeddingMergeError::no_reply:
            return "no_reply";
        case EmbeddingMergeError::malformed:
            return "malformed";
        case EmbeddingMergeError::count_mismatch:
            return "count_mismatch";
        case EmbeddingMergeError::index_mismatch:
            return "index_mismatch";
        case EmbeddingMergeError::shape_mismatch:
            return "shape_mismatch";
    }
    return "unknown";
}

std::optional<EmbeddingBatch> find_embedding_batch(const nlohmann::json& body) {
    if (!body.is_object()) {
        return std::nullopt;
    }
    // llama-server reads "input" when both are given.
    const char* field = body.contains("input") ? "input" : "content";
    const auto it = body.find(field);
    if (it == body.end() || !it->is_array() || it->size() < 2) {
        return std::nullopt;
    }
    // [1, 2, 3] is one prompt of token ids, not three prompts.
    const bool prompts = std::all_of(it->begin(), it->end(), [](const nlohmann::json& item) {
        return item.is_string() || item.is_array();
    });
    if (!prompts) {
        return std::nullopt;
    }
    return EmbeddingBatch{field, it->size()};
}

std::vector<EmbeddingSlice> plan_embedding_slices(std::size_t count,
                                                  const std::vector<int>& worker_slots) {
    std::vector<int> slots;
    for (const auto s : worker_slots) {
        if (s > 0) {
            slots.push_back(s);
        }
    }
    std::sort(slots.begin(), slots.end(), std::greater<>());
    if (count == 0 || slots.size() <= 1 || count <= static_cast<std::size_t>(slots.front())) {
        return {{0, count}};
    }
    // The fewest workers whose slots together take every input at once; all when none do.
    std::size_t used = 0;
    std::size_t room = 0;
    while (used < slots.size() && room < count) {
        room += static_cast<std::size_t>(slots[used]);
        ++used;
    }
    used = std::min(used, count);
    const auto total =
        std::accumulate(slots.begin(), slots.begin() + static_cast<long>(used), std::size_t{0});
    std::vector<std::size_t> sizes(used);
    std::size_t given = 0;
    for (std::size_t i = 0; i < used; ++i) {
        sizes[i] = std::max<std::size_t>(1, count * static_cast<std::size_t>(slots[i]) / total);
        given += sizes[i];
    }
    // What rounding left over goes one by one to the first slices (the largest workers);
    // what the floor of one took from them comes back off the largest slice.
    for (std::size_t i = 0; given < count; i = (i + 1) % used) {
        ++sizes[i];
        ++given;
    }
    while (given > count) {
        auto largest = std::max_element(sizes.begin(), sizes.end());
        --*largest;
        --given;
    }
    std::vector<EmbeddingSlice> out;
    std::size_t begin = 0;
    for (const auto size : sizes) {
        out.push_back({begin, begin + size});
        begin += size;
    }
    return out;
}

std::string embedding_slice_body(const nlohmann::json& body, const EmbeddingBatch& batch,
                                 EmbeddingSlice slice) {
    auto out = body;
    const auto& list = body.at(batch.field);
    out[batch.field] = nlohmann::json(list.begin() + static_cast<long>(slice.begin),
                                      list.begin() + static_cast<long>(slice.end));
    return out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

EmbeddingMerge merge_embedding_replies(const std::vector<EmbeddingSlice>& slices,
                                       const std::vector<EmbeddingSliceReply>& replies) {
    EmbeddingMerge out;
    if (replies.size() != slices.size()) {
        out.error = EmbeddingMergeError::no_reply;
        out.slice = std::min(replies.size(), slices.size());
        out.message = "a slice of the batch got no reply";
        return out;
    }
    // An error answer wins over a malformed one: it is what the client would have got.
    for (std::size_t i = 0; i < replies.size(); ++i) {
        if (replies[i].status != 0 && !is_success(replies[i].status)) {
            out.error = EmbeddingMergeError::slice_failed;
            out.slice = i;
            return out;
        }
    }
    const auto fail = [&](EmbeddingMergeError error, std::size_t i) {
        out.error = error;
        out.slice = i;
        out.message = message_for(error, i, slices[i]);
        return out;
    };
    std::vector<Parsed> parsed(replies.size());
    for (std::size_t i = 0; i < replies.size(); ++i) {
        if (replies[i].status == 0) {
            return fail(EmbeddingMergeError::no_reply, i);
        }
        if (const auto e = parse_reply(replies[i].body, slices[i].size(), parsed[i]);
            e != EmbeddingMergeError::none) {
            return fail(e, i);
        }
        if (parsed[i].native != parsed.front().native) {
            return fail(EmbeddingMergeError::shape_mismatch, i);
        }
    }
    ordered data = ordered::array();
    ordered usage;
    for (std::size_t i = 0; i < parsed.size(); ++i) {
        for (std::size_t k = 0; k < parsed[i].items.size(); ++k) {
            auto item = std::move(parsed[i].items[k]);
            item["index"] = slices[i].begin + k;
            data.push_back(std::move(item));
        }
        if (!parsed[i].native && parsed[i].doc.contains("usage")) {
            add_usage(usage, parsed[i].doc["usage"]);
        }
    }
    if (parsed.front().native) {
        out.body = data.dump(-1, ' ', false, ordered::error_handler_t::replace);
        return out;
    }
    auto whole = std::move(parsed.front().doc);
    whole["data"] = std::move(data);
    if (!usage.is_null()) {
        whole["usage"] = std::move(usage);
    }
    out.body = whole.dump(-1, ' ', false, ordered::error_handler_t::replace);
    return out;
}

}  // namespace llama_pool
