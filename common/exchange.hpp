#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "common/clock.hpp"
#include "common/http_message.hpp"
#include "common/socket.hpp"

namespace llama_pool {

// The rest of a response body, produced from a non-blocking source (a worker connection)
// without holding a thread: the server waits for the source and for the client in its
// event loop and calls these from whichever server thread wakes. Calls on one pump never
// overlap. The pump is destroyed (on a server thread, or on the thread calling the server's
// stop()) after its last call. source_fd() must stay open, and the same, until then: the
// server removes it from its epoll set before destroying the pump, so a pump that hands its
// worker connection back to a pool does so in its destructor, not in pull().
class BodyPump {
  public:
    enum class Step { more, finished, aborted };
    virtual ~BodyPump() = default;
    // Readable when more of the body may be available.
    virtual int source_fd() const = 0;
    // Reads what is available without blocking and appends bytes for the client to `out`.
    // more: wait for the source again; finished: send `out`, then end the body cleanly;
    // aborted: send `out`, then cut the connection (the client sees a truncated response).
    // Called once right after the hand-off, then whenever new bytes reach source_fd(): the
    // server waits edge-triggered, so it must read until the source would block (bytes left
    // in the socket are not reported again), or until it appended kPullBytes (the server then
    // asks the source again), and leave nothing it could give now in a buffer of its own. May
    // find nothing to read (a wake-up can be spurious): it then returns more.
    virtual Step pull(std::string& out) = 0;
    // What one pull() takes at most: a source that writes as fast as it is read would
    // otherwise keep one pull going, and its bytes in memory, past the server's bound for a
    // client that is behind (HttpServerOptions::pump_buffer_bytes).
    static constexpr std::size_t kPullBytes = 64 * 1024;
    // When the source counts as stalled if it has not become readable (re-read after each pull).
    // TimePoint::max() for none. Watched only while the source is: a client too slow to take
    // the bytes already pulled pauses the source and its deadline alike.
    virtual TimePoint deadline() const = 0;
    // The deadline passed with the source silent: append any last bytes, say how to end.
    virtual Step on_timeout(std::string& out) = 0;
    // The client hung up, a write to it failed or timed out, or the server is stopping. Also
    // called after finished/aborted if the last bytes could not be delivered. No call follows.
    virtual void on_client_gone() = 0;
};

class Exchange;

// The rest of a request's handling while it waits (for a queue slot, a worker's reply, a
// backoff) without holding a thread. The server waits in its event loop for wait_fd() to
// become readable, for deadline(), and for the client to hang up, and then calls resume()
// from whichever server thread wakes. Calls never overlap. A resume() either answers the
// exchange (respond(); begin(), write(), finish(); or begin() then hand_off()) and returns
// done, or returns wait and is called again after the next wake-up.
class Deferred {
  public:
    enum class Step { wait, done };
    virtual ~Deferred() = default;
    // Readable when there is something to resume for; -1 when only the deadline and the
    // client can wake it. Re-read after each resume(). It must stay open until the next
    // resume() starts or the deferred is destroyed, and no other waiting deferred may use it:
    // the server stops watching it before each resume() and before destroying the deferred,
    // so resume() may close it.
    virtual int wait_fd() const = 0;
    // When to resume even if nothing happened; TimePoint::max() for never. Re-read after each
    // resume().
    virtual TimePoint deadline() const = 0;
    // wait_fd() is readable, the deadline passed, or the client hung up (the deferred sees it
    // in Exchange::client_gone(), and must then return done). A wake-up may be spurious. Must
    // not block for long: a small answer's write, a connect to a local worker.
    virtual Step resume(Exchange& exchange) = 0;
    // No resume() follows: the server is stopping, or the request cannot go on (the handler
    // threw after defer(), epoll refused wait_fd() (each deferred needs a descriptor of its
    // own), or resume() said wait after the client hung up). Give back what is held; the
    // server cuts the client's connection afterwards.
    virtual void cancel() = 0;
    // After a resume() that returned done the deferred is destroyed before a pump it handed
    // the body to starts: what the pump needs must be moved into it. A defer() called inside
    // resume() replaces the running deferred once resume() returns.
};

// One request and the means to answer it. The HTTP server's connections implement it, and
// so do in-process callers (summarization chunks, the response cache's recorder, coalesced
// followers), which is what lets them share the relay's admission, retry and breaker path.
// The answer is either respond() or begin()/write()/finish() for a streamed body.
class Exchange {
  public:
    virtual ~Exchange() = default;

    virtual const HttpRequest& request() const = 0;
    virtual const std::string& remote_address() const = 0;

    virtual bool respond(int status, Headers headers, std::string_view body) = 0;
    // With no content length the body is streamed (chunked on the wire).
    virtual bool begin(int status, Headers headers, std::optional<std::size_t> content_length) = 0;
    virtual bool write(std::string_view data) = 0;
    virtual bool finish() = 0;
    // Ends the exchange without completing the body: the receiver sees a truncated response
    // rather than a silently corrupted one.
    virtual void abort() = 0;

    virtual bool responded() const = 0;
    virtual int response_status() const = 0;
    // The requester is gone (client hang-up, job cancelled): stop working for it.
    virtual bool client_gone() const = 0;
    // Watch set for blocking operations done on behalf of this exchange; a blocking call
    // returns early when either fd signals (see IoWatch).
    virtual IoWatch watch() const = 0;
    // Hands the rest of the body to the server's event loop; called after begin() (the head
    // is sent or queued). True when the exchange takes over: the handler must then return
    // without touching the exchange again, and the server does the writes (and the end of the
    // body) as the pump produces bytes. False when this exchange cannot (in-process exchanges,
    // or the head could not be sent): the caller keeps relaying blocking.
    virtual bool hand_off(std::unique_ptr<BodyPump> /*pump*/) { return false; }
    // Suspends the handling of this request: once the handler returns, the server calls
    // `deferred` as its waits end, and the connection holds no thread meanwhile. True when
    // the exchange takes it: the handler must then return without touching the exchange
    // again. False when it cannot (in-process exchanges, or an answer already begun): the
    // caller goes on blocking.
    virtual bool defer(std::unique_ptr<Deferred> /*deferred*/) { return false; }
};

}  // namespace llama_pool
