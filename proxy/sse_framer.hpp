#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace llama_pool {

// Cuts a relayed event stream at event boundaries, so that a client only ever receives
// whole SSE events: when a worker dies in the middle of an event, the half it wrote is
// dropped instead of reaching the client as an event that cannot be parsed. Bytes are never
// changed or reordered, only held back until the blank line that ends their event arrives.
//
// An event ends at a line feed that closes an empty line ("\n\n", "\r\n\r\n"). Streams
// ended by bare CRs only (no known server sends them) are held until `max_pending` bytes
// and then passed on as they are. Pure; not thread-safe.
class SseFramer {
  public:
    explicit SseFramer(std::size_t max_pending = 1024 * 1024) : max_pending_(max_pending) {}

    // Adds the next piece of the stream.
    void feed(std::string_view piece);
    // Removes and returns the bytes up to and including the last complete event (empty when
    // none is complete), or everything held when more than `max_pending` bytes would stay
    // behind: what is held back after take() never exceeds `max_pending`.
    std::string take();
    // Whatever is held back: the start of an event whose end has not arrived.
    const std::string& pending() const { return buffer_; }
    // Whether take() has returned bytes that did not end on an event boundary.
    bool unaligned() const { return unaligned_; }

  private:
    std::size_t max_pending_;
    std::string buffer_;
    std::size_t scanned_ = 0;     // bytes of buffer_ already looked at
    std::size_t boundary_ = 0;    // end of the last complete event in buffer_
    std::size_t line_start_ = 0;  // where the line being scanned began
    bool unaligned_ = false;
};

// The event that tells a client its stream was cut by a worker failure: llama-server's own
// mid-stream error shape (`data: {"error": {...}}`), marked as the pool's.
std::string sse_error_event(int status, std::string_view message);

}  // namespace llama_pool
