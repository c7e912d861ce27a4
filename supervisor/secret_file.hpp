#pragma once

#include <string>
#include <string_view>

namespace llama_pool {

// A secret in a file only this user can read (0600, in a fresh 0700 directory under
// $TMPDIR or /tmp), removed with its directory when the object goes. It hands a child
// process a secret without putting it on the child's command line, which any user on the
// machine can read in /proc/PID/cmdline (ps). Keep it only until the child has read it: a
// process killed with SIGKILL cannot remove it. Not thread-safe; immutable after
// construction.
class SecretFile {
  public:
    // Throws std::runtime_error, saying why, when the file cannot be written.
    explicit SecretFile(std::string_view secret);
    ~SecretFile();
    SecretFile(const SecretFile&) = delete;
    SecretFile& operator=(const SecretFile&) = delete;

    const std::string& path() const { return path_; }

  private:
    std::string dir_;
    std::string path_;
};

}  // namespace llama_pool
