"""Shared pieces of the chaos and soak runs (scripts/chaos/chaos.py, soak.py).

Standard library only. Everything runs on loopback and is started and stopped here: the
pool binary with real llama-server workers, fake upstreams whose faults are toggled through
a fault file, client threads that check every response byte by byte, and a sampler that
reads the pool's memory, descriptors, threads and children from /proc.
"""
import collections
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def log(prefix, msg):
    print(f"{prefix}: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toolchain(what):
    """The real llama-server or demo model: from the environment (make test sets them), else
    from the toolchain script, which builds them once per machine."""
    env = {"server-path": "LLAMA_POOL_TEST_SERVER", "model-path": "LLAMA_POOL_TEST_MODEL"}[what]
    if os.environ.get(env):
        return os.environ[env]
    out = subprocess.run(["bash", os.path.join(ROOT, "scripts", "llama-toolchain.sh"), what],
                         check=True, stdout=subprocess.PIPE, text=True)
    return out.stdout.strip().splitlines()[-1]


# ---------------------------------------------------------------------------------------
# HTTP on raw sockets: nothing is hidden (a client library would paper over a missing chunk
# terminator or retry a dropped request by itself).

class Response:
    def __init__(self):
        self.status = 0
        self.headers = []
        self.body = b""
        self.framing = None  # "length", "chunked", "close" or "none"
        self.complete = False
        self.error = ""
        self.keep_alive = False
        self.received_any = False

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


class Reader:
    def __init__(self, sock, deadline):
        self.sock = sock
        self.buf = b""
        self.deadline = deadline
        self.received_any = False

    def fill(self):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("client deadline")
        self.sock.settimeout(left)
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        self.received_any = True
        self.buf += data

    def line(self, limit=65536):
        while b"\r\n" not in self.buf:
            if len(self.buf) > limit:
                raise ValueError("line too long")
            self.fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exact(self, n):
        while len(self.buf) < n:
            self.fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def send_request(sock, method, path, body, headers):
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    for k, v in headers.items():
        head += f"{k}: {v}\r\n"
    if body or method in ("POST", "PUT"):
        head += f"Content-Length: {len(body)}\r\n"
    sock.sendall(head.encode("latin-1") + b"\r\n" + body)


def read_response(sock, method, timeout):
    """Reads one response; never raises. `complete` is true only for a body framed properly
    to its end (the length reached, the zero-size chunk and the blank line after it)."""
    r = Response()
    reader = Reader(sock, time.monotonic() + timeout)
    try:
        while True:
            status_line = reader.line()
            parts = status_line.split(b" ", 2)
            r.status = int(parts[1])
            r.headers = []
            while True:
                line = reader.line()
                if not line:
                    break
                k, _, v = line.decode("latin-1").partition(":")
                r.headers.append((k.strip(), v.strip()))
            if r.status != 100:
                break
        conn = (r.header("Connection") or "").lower()
        r.keep_alive = "close" not in conn
        te = (r.header("Transfer-Encoding") or "").lower()
        cl = r.header("Content-Length")
        if method == "HEAD" or r.status in (204, 304):
            r.framing = "none"
        elif te == "chunked":
            r.framing = "chunked"
            chunks = []
            while True:
                size = int(reader.line().split(b";")[0], 16)
                if size == 0:
                    while reader.line():
                        pass  # trailers
                    break
                chunks.append(reader.exact(size))
                if reader.exact(2) != b"\r\n":
                    raise ValueError("missing CRLF after chunk")
            r.body = b"".join(chunks)
        elif cl is not None:
            r.framing = "length"
            r.body = reader.exact(int(cl))
        else:
            r.framing = "close"
            r.keep_alive = False
            try:
                while True:
                    reader.fill()
            except EOFError:
                pass
            r.body = reader.buf
        r.complete = True
    except (OSError, EOFError, ValueError, TimeoutError, IndexError) as e:
        r.error = f"{type(e).__name__}: {e}"
        if isinstance(e, (TimeoutError, socket.timeout)):
            r.error = "timeout"
        r.keep_alive = False
        if r.framing == "chunked" and "chunks" in locals():
            r.body = b"".join(chunks)
    r.received_any = reader.received_any
    return r


def http(port, method, path, body=b"", headers=None, timeout=30):
    """One request on a fresh connection."""
    hdrs = {"Connection": "close"}
    hdrs.update(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            send_request(s, method, path, body, hdrs)
            return read_response(s, method, timeout)
    except OSError as e:
        r = Response()
        r.error = f"connect: {e}"
        return r


# ---------------------------------------------------------------------------------------
# What a response means for the client.

ADMISSION_MESSAGES = ("the pool's queue is full", "no worker slot became free",
                      "cannot start within its X-Request-Timeout")

OK_OUTCOMES = ("ok", "admission_503", "stream_completed", "stream_cut_clean")


def pool_error(body):
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    err = doc.get("error") if isinstance(doc, dict) else None
    return err if isinstance(err, dict) else None


def classify_plain(r):
    """A non-stream request: a 200 with a whole JSON body, or the pool's own admission 503."""
    if not r.complete:
        if r.error == "timeout":
            return "lost_timeout"
        return "lost_no_response" if r.status == 0 else "lost_incomplete_body"
    if r.status == 200:
        try:
            json.loads(r.body)
        except ValueError:
            return "lost_invalid_json"
        return "ok"
    if r.status == 503:
        err = pool_error(r.body)
        if err and err.get("source") == "llama-pool" and str(err.get("message", "")).startswith(
                ADMISSION_MESSAGES):
            return "admission_503"
    return f"lost_status_{r.status}"


def sse_events(text):
    """The events of an SSE body; None when the body does not end on an event boundary."""
    text = text.replace("\r\n", "\n")
    if text and not text.endswith("\n\n"):
        return None
    events = []
    for block in text.split("\n\n"):
        if not block:
            continue
        data = [line[5:].lstrip(" ") for line in block.split("\n") if line.startswith("data:")]
        if data:
            events.append("\n".join(data))
    return events


def classify_stream(r, chat):
    """A stream ends cleanly when:
      - the response is a 200 whose chunked body ends with the zero-size chunk (or the
        pool's own admission 503 before any stream started), and
      - the body is whole SSE events only (it ends on a blank line), and
      - its last event is the worker's own end (`"stop": true` on /completion, `[DONE]` on
        the OpenAI routes): "stream_completed"; or the pool's error event
        (`{"error": {..., "source": "llama-pool"}}`) after at least one event of the worker:
        "stream_cut_clean", a worker that failed after its stream had started.
    A stream cut before its first event is not clean: that fault could have been retried."""
    if r.status != 200:
        return classify_plain(r) if r.complete else ("lost_timeout" if r.error == "timeout"
                                                     else "lost_no_response")
    if not r.complete:
        return "lost_timeout" if r.error == "timeout" else "lost_stream_unterminated"
    if r.framing != "chunked":
        return "lost_stream_not_chunked"
    events = sse_events(r.body.decode("utf-8", "replace"))
    if events is None:
        return "lost_stream_partial_event"
    if not events:
        return "lost_stream_empty"
    last = events[-1]
    if chat and last == "[DONE]":
        return "stream_completed"
    try:
        doc = json.loads(last)
    except ValueError:
        return "lost_stream_bad_event"
    if not chat and isinstance(doc, dict) and doc.get("stop") is True:
        return "stream_completed"
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        if doc["error"].get("source") != "llama-pool":
            return "lost_stream_worker_error"
        return "stream_cut_clean" if len(events) > 1 else "lost_stream_cut_before_first_event"
    return "lost_stream_no_end"


WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
         "november oscar papa quebec romeo sierra tango uniform victor whiskey").split()


class LoadClient(threading.Thread):
    """Sends requests in a loop until stopped; records (phase, kind, outcome) per request.
    `kinds` picks among non-stream and stream, /completion and /v1/chat/completions."""

    def __init__(self, port, phase_of, record, stop, seed, kinds, keep_alive, timeout,
                 max_tokens=(8, 40)):
        super().__init__(daemon=True)
        self.port, self.phase_of, self.record, self.stop_event = port, phase_of, record, stop
        self.rng = random.Random(seed)
        self.kinds, self.keep_alive, self.timeout, self.max_tokens = kinds, keep_alive, timeout, \
            max_tokens
        self.sock = None

    def request_for(self, kind):
        stream = kind.endswith("stream")
        chat = kind.startswith("chat")
        prompt = " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(3, 30)))
        n = self.rng.randint(*self.max_tokens)
        if chat:
            body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": n,
                    "stream": stream}
            return "/v1/chat/completions", body, stream, chat
        return "/completion", {"prompt": prompt, "n_predict": n, "stream": stream}, stream, chat

    def one(self):
        kind = self.rng.choice(self.kinds)
        path, body, stream, chat = self.request_for(kind)
        phase = self.phase_of()
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json",
                   "Connection": "keep-alive" if self.keep_alive else "close"}
        reused = self.sock is not None
        try:
            if self.sock is None:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            send_request(self.sock, "POST", path, data, headers)
            r = read_response(self.sock, "POST", self.timeout)
        except OSError as e:
            r = Response()
            r.error = f"send: {e}"
        if not (r.complete and r.keep_alive and self.keep_alive):
            if self.sock is not None:
                self.sock.close()
            self.sock = None
        outcome = classify_stream(r, chat) if stream else classify_plain(r)
        if reused and not r.received_any and outcome.startswith("lost"):
            outcome = "lost_on_reused_connection"
        self.record(phase, kind, outcome, r)

    def run(self):
        while not self.stop_event.is_set():
            self.one()
        if self.sock is not None:
            self.sock.close()


class Tally:
    """Outcomes per phase, thread-safe, with a few examples of each failure."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts = collections.OrderedDict()
        self.examples = collections.defaultdict(list)

    def record(self, phase, kind, outcome, response):
        with self.lock:
            per = self.counts.setdefault(phase, collections.Counter())
            per[outcome] += 1
            per["_" + ("stream" if kind.endswith("stream") else "plain")] += 1
            if outcome.startswith("lost") and len(self.examples[outcome]) < 3:
                self.examples[outcome].append(
                    f"phase={phase} kind={kind} status={response.status} error={response.error!r} "
                    f"body={response.body[-300:]!r}")

    def lost(self):
        with self.lock:
            return sum(n for per in self.counts.values() for k, n in per.items()
                       if k.startswith("lost"))

    def table(self, phases):
        cols = ["ok", "admission_503", "stream_completed", "stream_cut_clean"]
        extra = sorted({k for per in self.counts.values() for k in per
                        if k not in cols and not k.startswith("_")})
        cols += extra
        header = ["phase", "requests"] + cols
        rows = []
        for phase in phases:
            per = self.counts.get(phase, collections.Counter())
            total = per["_plain"] + per["_stream"]
            rows.append([phase, str(total)] + [str(per.get(c, 0)) for c in cols])
        widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
        line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
        out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        out += [line(r) for r in rows]
        return "\n".join(out)


# ---------------------------------------------------------------------------------------
# Processes.

def proc_children(pid):
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def proc_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def proc_cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def proc_sample(pid):
    """RSS (KiB), open descriptors and threads of a live process."""
    rss = threads = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds, threads


class Processes:
    """Starts processes in their own sessions and stops whatever is left at the end."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = []

    def start(self, cmd, name):
        out = open(os.path.join(self.tmp, f"{name}.log"), "w")
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self, p, timeout=30):
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGTERM)
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            except ProcessLookupError:
                pass

    def stop_all(self):
        for p in reversed(self.procs):
            self.stop(p)


class Fake:
    """A fake-llama-server upstream whose faults are set through its fault file."""

    def __init__(self, procs, build, tmp, name, extra=()):
        self.port = free_port()
        self.fault_file = os.path.join(tmp, f"{name}.faults")
        open(self.fault_file, "w").close()
        self.proc = procs.start([os.path.join(build, "fake-llama-server"), "--port", str(self.port),
                                 "--fault-file", self.fault_file, *extra], name)

    def set_fault(self, fault):
        """e.g. "fail 500", "garbage", "truncate", "stall 2"; None clears it."""
        tmp = self.fault_file + ".tmp"
        with open(tmp, "w") as f:
            if fault:
                f.write(f"{self.port} {fault}\n")
        os.replace(tmp, self.fault_file)

    def url(self):
        return f"http://127.0.0.1:{self.port}"


class Pool:
    def __init__(self, procs, build, args, name="pool"):
        self.port = free_port()
        self.name = name
        self.log_path = os.path.join(procs.tmp, f"{name}.log")
        self.proc = procs.start([os.path.join(build, "llama-pool"), "--port", str(self.port),
                                 *args], name)
        self.pid = self.proc.pid
        self.children_seen = set()

    def get(self, path, timeout=10):
        return http(self.port, "GET", path, timeout=timeout)

    def status(self):
        r = self.get("/pool/status")
        try:
            return json.loads(r.body) if r.status == 200 else {}
        except ValueError:
            return {}

    def ready_count(self):
        return self.status().get("totals", {}).get("ready", 0)

    def wait_ready(self, n, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            if self.ready_count() >= n:
                return True
            time.sleep(0.2)
        return False

    def managed_pids(self):
        return [w["pid"] for w in self.status().get("workers", [])
                if w.get("managed") and w.get("pid", 0) > 0]

    def note_children(self):
        kids = proc_children(self.pid)
        self.children_seen.update(kids)
        return kids

    def log_text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()


class Sampler(threading.Thread):
    """Samples the pool's RSS, descriptors, threads and children every `interval` seconds."""

    def __init__(self, pool, phase_of, interval=1.0):
        super().__init__(daemon=True)
        self.pool, self.phase_of, self.interval = pool, phase_of, interval
        self.samples = []  # (t, phase, rss_kib, fds, threads, children)
        self.stop_event = threading.Event()
        self.started = time.monotonic()

    def run(self):
        while not self.stop_event.is_set():
            try:
                rss, fds, threads = proc_sample(self.pool.pid)
                kids = self.pool.note_children()
                self.samples.append((time.monotonic() - self.started, self.phase_of(), rss, fds,
                                     threads, len(kids)))
            except OSError:
                pass
            self.stop_event.wait(self.interval)


def conclude(prog, args, tmp, record, failures, success):
    """The end of a run: the JSON record when --json asks for it, then the verdict. On failure
    the logs in `tmp` are kept (args.keep). Returns the exit code."""
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
    if failures:
        print("\nFAILED:\n" + "\n".join(f"- {f}" for f in failures))
        log(prog, f"logs kept in {tmp}")
        args.keep = True
        return 1
    print(f"\n{prog}: {success}")
    return 0


def make_tmp(prefix):
    return tempfile.mkdtemp(prefix=prefix)
