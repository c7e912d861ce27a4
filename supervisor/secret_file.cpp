#include "supervisor/secret_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

namespace llama_pool {

namespace {

std::runtime_error failure(const std::string& what) {
    return std::runtime_error(what + ": " + std::strerror(errno));
}

}  // namespace

SecretFile::SecretFile(std::string_view secret) {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern =
        std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/llama-pool-XXXXXX";
    std::vector<char> buffer(pattern.begin(), pattern.end());
    buffer.push_back('\0');
    if (::mkdtemp(buffer.data()) == nullptr) {  // mode 0700
        throw failure("cannot create a private directory from " + pattern);
    }
    dir_ = buffer.data();
    path_ = dir_ + "/worker.key";
    const int fd =
        ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        const auto error = failure("cannot create " + path_);
        ::rmdir(dir_.c_str());
        throw error;
    }
    const std::string line = std::string(secret) + "\n";
    const bool written = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
    const int write_errno = errno;
    ::close(fd);
    if (!written) {
        errno = write_errno;
        const auto error = failure("cannot write " + path_);
        ::unlink(path_.c_str());
        ::rmdir(dir_.c_str());
        throw error;
    }
}

SecretFile::~SecretFile() {
    ::unlink(path_.c_str());
    ::rmdir(dir_.c_str());
}

}  // namespace llama_pool
