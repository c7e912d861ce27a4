#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace llama_pool {

// The decisions of an embeddings batch spread over a group's workers: which requests are
// batches, how to cut them, and how the slices' replies become the one reply a single
// llama-server gives. All pure; proxy/embeddings_fanout does the I/O.

// Where a request's list of inputs is.
struct EmbeddingBatch {
    std::string field;      // "input" (OpenAI form, any route) or "content" (native form)
    std::size_t count = 0;  // inputs in the list
};

// The list of inputs of an embeddings body, when it has several that can be sent apart:
// "input" (else "content") is an array of at least two prompts, each a string or an array
// (token ids). Nullopt otherwise: one string, one prompt of token ids ([1, 2, 3]), no list,
// or a list of anything else (the worker says what is wrong with it, as without the pool).
std::optional<EmbeddingBatch> find_embedding_batch(const nlohmann::json& body);

// Inputs [begin, end) of the whole list.
struct EmbeddingSlice {
    std::size_t begin = 0;
    std::size_t end = 0;
    std::size_t size() const { return end - begin; }
};

// How to cut `count` inputs over the ready workers, given each one's slots: one slice (the
// request stays whole) when the list fits the largest worker's slots or one worker is
// ready; else as many slices as workers needed to give every input a slot (all of them when
// the list is longer than all their slots), sized in proportion to those workers' slots,
// contiguous and in input order, none empty.
std::vector<EmbeddingSlice> plan_embedding_slices(std::size_t count,
                                                  const std::vector<int>& worker_slots);

// `body` with its list cut to `slice`; every other field as given.
std::string embedding_slice_body(const nlohmann::json& body, const EmbeddingBatch& batch,
                                 EmbeddingSlice slice);

// One slice's answer. status 0: none came (the client left, the pool stopped).
struct EmbeddingSliceReply {
    int status = 0;
    std::string body;
};

enum class EmbeddingMergeError {
    none,
    slice_failed,    // a slice was answered with an error: that answer is the reply
    no_reply,        // a slice got no answer at all
    malformed,       // a 2xx reply that is not an embeddings reply
    count_mismatch,  // a reply with more or fewer embeddings than its slice had inputs
    index_mismatch,  // indices missing, repeated or out of range
    shape_mismatch,  // slices answered in different shapes
};
std::string_view to_string(EmbeddingMergeError error);

struct EmbeddingMerge {
    EmbeddingMergeError error = EmbeddingMergeError::none;
    std::size_t slice = 0;  // the slice at fault (the first in input order)
    std::string body;       // the merged reply when none
    std::string message;    // what was wrong, for the client's 502
};

// The slices' replies (one per slice, in slice order) merged into the reply one server
// gives for the whole list: the OpenAI shape ({"data": [...], "usage": {...}, ...}) with
// data in input order, data[i].index == i, usage's counts summed and the other fields as
// the first slice gave them; or the native shape (an array of {"index", "embedding"}) in
// input order with index == position. A slice that failed makes the merge fail with its
// slice (the first failed one in input order), so the client gets that answer.
EmbeddingMerge merge_embedding_replies(const std::vector<EmbeddingSlice>& slices,
                                       const std::vector<EmbeddingSliceReply>& replies);

}  // namespace llama_pool
