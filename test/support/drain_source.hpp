#pragma once

#include <sys/socket.h>

#include <cerrno>
#include <string>

#include "common/exchange.hpp"

namespace llama_pool::test {

// A test pump's pull(): appends what `fd` holds until it would block or kPullBytes were
// appended, as the BodyPump contract asks (the server waits for new bytes, not for bytes left
// in the socket). finished at the source's end, aborted on an error.
inline BodyPump::Step drain_source(int fd, std::string& out) {
    char buf[16384];
    for (const auto before = out.size(); out.size() - before < BodyPump::kPullBytes;) {
        const auto n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) {
            out.append(buf, static_cast<std::size_t>(n));
        } else if (n == 0) {
            return BodyPump::Step::finished;
        } else if (errno != EINTR) {
            return errno == EAGAIN ? BodyPump::Step::more : BodyPump::Step::aborted;
        }
    }
    return BodyPump::Step::more;
}

}  // namespace llama_pool::test
