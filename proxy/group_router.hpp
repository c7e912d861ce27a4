#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/group_config.hpp"

namespace llama_pool {

// Why a request went to its group, for logs and tests.
enum class GroupMatch { name, alias, model_file, endpoint, default_group };
std::string_view to_string(GroupMatch match);

struct GroupChoice {
    std::size_t group = 0;
    GroupMatch match = GroupMatch::default_group;
};

// Which group serves a request. Pure and immutable after construction, so request threads
// share it without a lock. Rules, in order: the request's model equals a group's name or
// alias; else the file name at the end of the model equals the file name of a group's model
// (clients such as the n8n node send paths); else the path is one of a group's endpoints;
// else the default group. An unknown model is never an error: clients send names the pool
// cannot know.
class GroupRouter {
  public:
    // `groups` resolved (models filled in); exactly one should be the default, else the first.
    explicit GroupRouter(const std::vector<GroupConfig>& groups);

    GroupChoice route(std::string_view model, std::string_view path) const;
    // A group by name or alias; none when no group has it.
    std::optional<std::size_t> find(std::string_view name) const;

  private:
    struct Entry {
        std::string name;
        std::vector<std::string> aliases;
        std::string model_file;
        std::vector<std::string> endpoints;
    };
    std::vector<Entry> entries_;
    std::size_t default_ = 0;
};

// The model a request names: the top-level "model" string of a JSON body, else `?model=` in
// the query (percent-decoded). Empty when there is none. Stops reading the body at the key.
std::string requested_model(std::string_view body, std::string_view query);

}  // namespace llama_pool
