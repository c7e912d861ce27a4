#include "proxy/sse_framer.hpp"

#include "common/error_body.hpp"

namespace llama_pool {

void SseFramer::feed(std::string_view piece) {
    buffer_.append(piece);
    for (; scanned_ < buffer_.size(); ++scanned_) {
        if (buffer_[scanned_] != '\n') {
            continue;
        }
        const auto line = std::string_view(buffer_).substr(line_start_, scanned_ - line_start_);
        if (line.empty() || line == "\r") {
            boundary_ = scanned_ + 1;
        }
        line_start_ = scanned_ + 1;
    }
}

std::string SseFramer::take() {
    std::size_t cut = boundary_;
    if (buffer_.size() - cut > max_pending_) {
        cut = buffer_.size();  // an event this long is passed on as it is
        unaligned_ = true;
    }
    if (cut == 0) {
        return {};
    }
    std::string out = buffer_.substr(0, cut);
    buffer_.erase(0, cut);
    scanned_ -= cut;
    line_start_ = line_start_ >= cut ? line_start_ - cut : 0;
    boundary_ = 0;
    return out;
}

std::string sse_error_event(int status, std::string_view message) {
    return "data: " + make_error_body(status, message) + "\n\n";
}

}  // namespace llama_pool
