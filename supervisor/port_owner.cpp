#include "supervisor/port_owner.hpp"

#include <dirent.h>
#include <unistd.h>

#include <fstream>
#include <set>
#include <sstream>
#include <string>

namespace llama_pool {

namespace {

void listening_inodes(const char* table, std::uint16_t port, std::set<std::string>& out) {
    std::ifstream in(table);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
        std::istringstream fields(line);
        std::string slot, local, remote, state, queues, timer, retrans, uid, timeout, inode;
        fields >> slot >> local >> remote >> state >> queues >> timer >> retrans >> uid >>
            timeout >> inode;
        const auto colon = local.rfind(':');
        if (colon == std::string::npos || state != "0A") {  // 0A = LISTEN
            continue;
        }
        if (std::stoul(local.substr(colon + 1), nullptr, 16) == port) {
            out.insert(inode);
        }
    }
}

}  // namespace

bool process_listens_on(pid_t pid, std::uint16_t port) {
    std::set<std::string> inodes;
    listening_inodes("/proc/net/tcp", port, inodes);
    listening_inodes("/proc/net/tcp6", port, inodes);
    if (inodes.empty()) {
        return false;
    }
    const auto dir_path = "/proc/" + std::to_string(pid) + "/fd";
    DIR* dir = ::opendir(dir_path.c_str());
    if (dir == nullptr) {
        return false;
    }
    bool found = false;
    while (const dirent* entry = ::readdir(dir)) {
        char target[256] = {};
        const auto link = dir_path + "/" + entry->d_name;
        const auto n = ::readlink(link.c_str(), target, sizeof target - 1);
        if (n <= 0) {
            continue;
        }
        const std::string t(target, static_cast<std::size_t>(n));
        if (t.rfind("socket:[", 0) == 0 && inodes.count(t.substr(8, t.size() - 9))) {
            found = true;
            break;
        }
    }
    ::closedir(dir);
    return found;
}

}  // namespace llama_pool
