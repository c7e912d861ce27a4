#!/usr/bin/env python3
"""llama-pool benchmarks, side by side in one run (make bench).

Starts everything it measures itself, on loopback only, and stops it all at the end:
  1. proxy overhead: the fake worker direct vs through llama-pool, nginx and HAProxy
     (wrk; 1 and 64 connections; keep-alive and Connection: close clients);
  2. streaming relay: added time to first event and added per-event latency, CPU per
     thousand events of each proxy;
  3. real-worker scaling: one llama-server, N workers behind llama-pool, and one
     llama-server with N slots, on the same cores, at fixed closed-loop concurrencies, on the
     demo model and on a larger random-weight model (built once, cached by its shape);
  4. memory and threads of llama-pool: idle, 1000 idle keep-alive clients, 200 streams;
  5. prefix affinity vs round-robin on real llama-server workers: prompt tokens evaluated
     and time to first token on a workload sharing long prefixes;
  (6. summarizing, 7. model groups: summarize_bench.py and groups_bench.py;)
  8. /metrics under a 20 Hz scrape (an endpoint picker's pace) with 16 fake workers'
     metrics merged: scrape latency and the pool's CPU while it serves (scrape_bench.py).
  (9. fairness, 10. work: fairness_bench.py and work_bench.py;)
  targets18: issue 18's item 5, targets (a) to (e) against nginx, met or not, in a block of
     its own in docs/BENCHMARKS.md (targets18_bench.py, reusing fanout_bench.py and
     tokenize_bench.py).
Results go between the markers in docs/BENCHMARKS.md (with the command and the machine);
--smoke runs every part for a moment and writes nothing (it checks the harness, not speed).
Standard library only.
"""
import argparse
import atexit
import datetime
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH_DIR = os.path.join(ROOT, "scripts", "bench")
PROCESSES = []
SECTIONS = ("overhead", "streaming", "scaling", "memory", "affinity", "summarize", "groups",
            "fairness", "scrape", "work", "targets18")
LOAD_AT_START = []


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd, name, **kw):
    out = open(os.path.join(TMP, f"{name}.log"), "w")
    p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kw)
    PROCESSES.append(p)
    return p


def stop(p, sig=signal.SIGTERM, timeout=20):
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def raise_nofile(want):
    """Lifts this process's descriptor limit (its children inherit it) to `want`: the hard limit
    too when privileged, else up to the hard limit. Returns the soft limit reached."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@atexit.register
def cleanup():
    for p in reversed(PROCESSES):
        stop(p)


def http(port, method, path, body=None, headers=None, timeout=30):
    """One request on a fresh connection; returns (status, body bytes)."""
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else (body or b"")
    req = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(data)}\r\n"
    for k, v in (headers or {}).items():
        req += f"{k}: {v}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(req.encode() + b"\r\n" + data)
        raw = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            raw += chunk
    head, _, rest = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/1.") else 0
    if b"transfer-encoding: chunked" in head.lower():
        rest = dechunk(rest)
    return status, rest


def dechunk(data):
    out, pos = b"", 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return out
        size = int(data[pos:eol].split(b";")[0] or b"0", 16)
        if size == 0:
            return out
        out += data[eol + 2:eol + 2 + size]
        pos = eol + 2 + size + 2


def wait_http(port, path="/health", want=200, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            status, body = http(port, "GET", path, timeout=2)
            if status == want and (path != "/health" or b'"ok"' in body):
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"port {port} did not answer {path} with {want} in {timeout} s")


def wait_pool_ready(port, workers, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status, body = http(port, "GET", "/pool/status")
        if status == 200 and json.loads(body)["totals"]["ready"] >= workers:
            return
        time.sleep(0.1)
    raise RuntimeError(f"llama-pool on {port} did not get {workers} workers ready in {timeout} s")


def percentile(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def proc_cpu_seconds(pid):
    """utime+stime of a process and its children threads (one process)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_pids(pid):
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def tree_cpu(pid):
    total = 0.0
    for p in tree_pids(pid):
        try:
            total += proc_cpu_seconds(p)
        except OSError:
            pass
    return total


def tree_cpu_ns(pid):
    """On-CPU nanoseconds of a process tree (schedstat), for short intervals where clock ticks
    (10 ms) are too coarse. Live threads count to the nanosecond; threads that already exited
    count too, in ticks (the process's utime+stime minus its live threads'): summing only the
    live threads made a thread that retired inside a window take its whole CPU time out of it,
    and the pool, whose idle threads retire, looked cheaper than it was."""
    tick = 1e9 / os.sysconf("SC_CLK_TCK")
    total = 0
    for p in tree_pids(pid):
        try:
            live_ns, live_ticks = 0, 0
            for tid in os.listdir(f"/proc/{p}/task"):
                try:
                    with open(f"/proc/{p}/task/{tid}/schedstat") as f:
                        live_ns += int(f.read().split()[0])
                    with open(f"/proc/{p}/task/{tid}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    live_ticks += int(fields[11]) + int(fields[12])
                except OSError:
                    pass  # a thread that just ended: the process's total has it
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            exited_ticks = max(0, int(fields[11]) + int(fields[12]) - live_ticks)
            total += live_ns + int(exited_ticks * tick)
        except OSError:
            pass  # a process that just ended
    return total


def rss_and_threads(pid):
    with open(f"/proc/{pid}/status") as f:
        text = f.read()
    rss = int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) * 1024
    threads = int(re.search(r"Threads:\s+(\d+)", text).group(1))
    return rss, threads


# --- the processes under test ---------------------------------------------------------


def start_fake(port, extra):
    start([FAKE, "--port", str(port), "--parallel", "256", *extra], f"fake-{port}")
    wait_http(port)


def start_pool(port, worker_args=(), extra=(), name="pool", upstream=None, connections=4096):
    """llama-pool with one fake worker it supervises, or, given `upstream`, in front of that
    standalone server only (--workers 0), exactly like nginx and HAProxy."""
    args = [POOL, "--port", str(port), "--queue-max", "100000", "--log-level", "warn",
            "--max-connections", str(connections), *extra]
    if upstream is None:
        args += ["--workers", "1", "--llama-server", FAKE, "--model", POOL, "--parallel", "256"]
        for a in worker_args:
            args += ["--worker-arg", a]
    else:
        args += ["--workers", "0", "--upstream", f"http://127.0.0.1:{upstream}"]
    p = start(args, name)
    wait_http(port)
    return p


def start_nginx(port, upstream, worker_connections=4096):
    """nginx in front of `upstream`; `worker_connections` counts a worker's client and upstream
    connections both."""
    d = tempfile.mkdtemp(dir=TMP, prefix="nginx-")
    conf = open(os.path.join(BENCH_DIR, "nginx.conf.in")).read()
    conf = conf.replace("@DIR@", d).replace("@PORT@", str(port)).replace("@UPSTREAM@", str(upstream))
    conf = conf.replace("@CONNECTIONS@", str(worker_connections))
    conf = conf.replace("@NOFILE@", str(worker_connections + 64))
    path = os.path.join(d, "nginx.conf")
    open(path, "w").write(conf)
    p = start(["nginx", "-c", path, "-p", d], f"nginx-{port}")
    wait_http(port)
    return p


def start_haproxy(port, upstream):
    conf = open(os.path.join(BENCH_DIR, "haproxy.cfg.in")).read()
    conf = conf.replace("@PORT@", str(port)).replace("@UPSTREAM@", str(upstream))
    path = os.path.join(TMP, f"haproxy-{port}.cfg")
    open(path, "w").write(conf)
    p = start(["haproxy", "-db", "-f", path], f"haproxy-{port}")
    wait_http(port)
    return p


# --- 1. proxy overhead -------------------------------------------------------------------


def wrk(port, conns, close, seconds):
    cmd = ["wrk", f"-t{1 if conns == 1 else 2}", f"-c{conns}", f"-d{seconds}s", "-s",
           os.path.join(BENCH_DIR, "report.lua")]
    if close:
        cmd += ["-H", "Connection: close"]
    cmd.append(f"http://127.0.0.1:{port}/completion")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    line = next(l for l in out.splitlines() if l.startswith("JSON "))
    r = json.loads(line[5:])
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r, " ".join(cmd)


def start_overhead_targets():
    """One fast fake and the three proxies in front of it: {target name: port}."""
    upstream = free_port()
    start_fake(upstream, ["--tokens-per-second", "1000000"])
    targets = {"direct": upstream}
    targets["llama-pool"] = free_port()
    start_pool(targets["llama-pool"], upstream=upstream)
    targets["nginx"] = free_port()
    start_nginx(targets["nginx"], upstream)
    targets["haproxy"] = free_port()
    start_haproxy(targets["haproxy"], upstream)
    return targets


def bench_overhead(seconds):
    targets = start_overhead_targets()
    rows, commands = [], []
    for conns in (1, 64):
        for close in (False, True):
            for name, port in targets.items():
                r, cmd = wrk(port, conns, close, seconds)
                commands.append(cmd.replace(str(port), f"<{name}>"))
                rows.append({"target": name, "conns": conns,
                             "mode": "close" if close else "keep-alive", **r})
                log(f"overhead {name} c={conns} {'close' if close else 'ka'}: "
                    f"{r['rps']:.0f} rps p50 {r['p50_us']} us p99 {r['p99_us']} us errors {r['errors']}")
    return rows, sorted(set(commands))


# --- 2. streaming relay ------------------------------------------------------------------


def stream_delivery(port, events):
    """One stream from a fake that stamps its events: returns (time to first event, each
    event's delivery time from the fake's write to our read), in seconds. Both ends read
    CLOCK_MONOTONIC, so the fake's pacing and its drift under load do not count."""
    body = json.dumps({"prompt": "x", "max_tokens": events, "stream": True}).encode()
    req = (f"POST /completion HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    delays, buf, first = [], b"", None
    stamp = re.compile(rb'"t_mono_ns":(\d+)')
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter()
        s.sendall(req)
        while True:
            chunk = s.recv(65536)
            now_ns = time.monotonic_ns()
            if not chunk:
                break
            if first is None and b"data: " in chunk:
                first = time.perf_counter() - t0
            buf += chunk
            # Complete events only; a stamp split across reads waits for the rest.
            end = buf.rfind(b"\n\n")
            if end >= 0:
                delays += [(now_ns - int(m)) / 1e9 for m in stamp.findall(buf[:end])]
                buf = buf[end + 2:]
    return first, delays


def bench_streaming(runs, events):
    upstream = free_port()
    # 200 events per second: one every 5 ms, a fast model's pace.
    start_fake(upstream, ["--tokens-per-second", "200", "--stamp-events"])
    procs = {"direct": (upstream, None)}
    port = free_port()
    procs["llama-pool"] = (port, start_pool(port, name="pool-stream", upstream=upstream))
    port = free_port()
    procs["nginx"] = (port, start_nginx(port, upstream))
    port = free_port()
    procs["haproxy"] = (port, start_haproxy(port, upstream))
    results = {name: {"first": [], "delays": [], "cpu": 0.0} for name in procs}
    for name, (port, proc) in procs.items():
        stream_delivery(port, 5)  # warm the connection pools
    # Interleaved, so that load from elsewhere falls on every target alike.
    for _ in range(runs):
        for name, (port, proc) in procs.items():
            # nginx's work is done by its worker child, so each proxy's whole process tree.
            cpu0 = tree_cpu_ns(proc.pid) if proc else 0
            first, delays = stream_delivery(port, events)
            if proc:
                results[name]["cpu"] += (tree_cpu_ns(proc.pid) - cpu0) / 1e9
            results[name]["first"].append(first)
            results[name]["delays"] += delays
    rows = []
    base = results["direct"]
    base_first = statistics.median(base["first"]) * 1000
    base_delays = sorted(d * 1000 for d in base["delays"])
    for name, r in results.items():
        delays = sorted(d * 1000 for d in r["delays"])
        first = statistics.median(r["first"]) * 1000
        rows.append({"target": name, "ttfb_ms": first, "added_ttfb_ms": first - base_first,
                     "delivery_p50_ms": percentile(delays, 0.5),
                     "delivery_p99_ms": percentile(delays, 0.99),
                     "added_event_p50_ms": percentile(delays, 0.5) - percentile(base_delays, 0.5),
                     "added_event_p99_ms": percentile(delays, 0.99) - percentile(base_delays, 0.99),
                     "cpu_ms_per_1000_events": r["cpu"] * 1000 / (runs * (events + 1)) * 1000
                     if procs[name][1] else None})
        log(f"stream {name}: first event {first:.2f} ms, delivery p50 "
            f"{rows[-1]['delivery_p50_ms']:.3f} ms p99 {rows[-1]['delivery_p99_ms']:.3f} ms")
    return rows


# --- 4. memory and connections -------------------------------------------------------------


def bench_memory(idle_conns, streams, hold_seconds, retire_wait):
    port = free_port()
    pool = start_pool(port, ["--tokens-per-second", "20"], name="pool-mem")
    time.sleep(0.5)
    rows = []
    rss, threads = rss_and_threads(pool.pid)
    rows.append({"state": "idle", "rss_mib": rss / 2**20, "threads": threads})
    socks = []
    for _ in range(idle_conns):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        s.recv(4096)
        socks.append(s)
    time.sleep(0.5)
    rss, threads = rss_and_threads(pool.pid)
    rows.append({"state": f"{idle_conns} idle keep-alive clients", "rss_mib": rss / 2**20, "threads": threads})
    if retire_wait:
        # The threads that served the clients' first requests retire after 10 s without work.
        time.sleep(retire_wait)
        rss, threads = rss_and_threads(pool.pid)
        rows.append({"state": f"{idle_conns} idle keep-alive clients, {retire_wait} s later",
                     "rss_mib": rss / 2**20, "threads": threads})
    for s in socks:
        s.close()
    time.sleep(1.0)
    body = json.dumps({"prompt": "x", "max_tokens": int(20 * hold_seconds) + 20, "stream": True}).encode()
    stream_socks = []
    for _ in range(streams):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall((f"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
        stream_socks.append(s)
    time.sleep(hold_seconds)
    for s in stream_socks:
        s.setblocking(False)
        try:
            s.recv(1 << 20)  # drain what arrived; the streams go on
        except BlockingIOError:
            pass
    rss, threads = rss_and_threads(pool.pid)
    rows.append({"state": f"{streams} concurrent streams", "rss_mib": rss / 2**20, "threads": threads})
    for s in stream_socks:
        s.close()
    for r in rows:
        log(f"memory {r['state']}: {r['rss_mib']:.1f} MiB, {r['threads']} threads")
    stop(pool)
    return rows


# --- 5. prefix affinity on real workers ------------------------------------------------------


def run_threads(target, count):
    """Runs `target` on `count` threads at once and returns the wall time until all end."""
    import threading
    t0 = time.perf_counter()
    threads = [threading.Thread(target=target) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def post_stream(port, payload, timeout):
    """POST /completion with `payload` on a fresh connection, read the whole stream: returns
    (time to first event or None, whole latency, the data events' JSON)."""
    body = json.dumps(payload).encode()
    req = (f"POST /completion HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        t0 = time.perf_counter()
        s.sendall(req)
        buf, ttft = b"", None
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            if ttft is None and b"data: " in chunk:
                ttft = time.perf_counter() - t0
            buf += chunk
        latency = time.perf_counter() - t0
    events = [json.loads(e[6:]) for e in dechunk(buf.partition(b"\r\n\r\n")[2]).split(b"\n\n")
              if e.startswith(b"data: ")]
    return ttft, latency, events


def stream_completion(port, prompt, n_predict):
    ttft, _, events = post_stream(port, {"prompt": prompt, "n_predict": n_predict,
                                         "stream": True, "cache_prompt": True}, 120)
    return ttft, events[-1].get("timings", {}).get("prompt_n", 0)


def bench_affinity(requests, concurrency):
    import threading
    rng = random.Random(42)
    words = ["alpha", "river", "stone", "market", "signal", "garden", "copper", "winter", "paper",
             "engine", "harbor", "silver", "forest", "letter", "bridge", "thunder"]
    docs = [" ".join(rng.choice(words) for _ in range(700)) for _ in range(4)]
    order = [rng.randrange(len(docs)) for _ in range(requests)]
    rows = []
    for policy in ("round-robin", "prefix-affinity"):
        port = free_port()
        pool = start([POOL, "--port", str(port), "--workers", "2", "--llama-server", LLAMA_SERVER,
                      "--model", MODEL, "--ctx-size", "4096", "--parallel", "2",
                      "--balancer", policy, "--log-level", "warn"], f"pool-{policy}")
        wait_http(port)
        stream_completion(port, "warm up", 1)
        results, lock = [], threading.Lock()
        jobs = list(enumerate(order))

        def worker():
            while True:
                with lock:
                    if not jobs:
                        return
                    i, d = jobs.pop(0)
                r = stream_completion(port, docs[d] + f"\nQuestion {i}: what is it about?", 4)
                with lock:
                    results.append(r)

        wall = run_threads(worker, concurrency)
        ttfts = sorted(r[0] * 1000 for r in results)
        rows.append({"policy": policy, "requests": len(results),
                     "prompt_tokens_evaluated": sum(r[1] for r in results),
                     "ttft_p50_ms": ttfts[len(ttfts) // 2],
                     "ttft_p90_ms": ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.9))],
                     "wall_s": wall})
        log(f"affinity {policy}: {rows[-1]}")
        stop(pool)
    return rows


# --- 3. real-worker scaling -----------------------------------------------------------------

SCALING_PROMPT = "Once upon a time, in a quiet village by the sea, there lived an old clockmaker who"


def timed_stream(port, n_predict):
    """One streamed completion of exactly n_predict tokens on a fresh connection: returns
    (time to first token, whole latency, tokens predicted) in seconds and tokens."""
    ttft, latency, events = post_stream(port, {"prompt": SCALING_PROMPT, "n_predict": n_predict,
                                               "ignore_eos": True, "stream": True}, 600)
    last = events[-1] if events else {}
    return ttft or latency, latency, int(last.get("tokens_predicted", 0))


def closed_loop(port, concurrency, seconds, n_predict):
    """`concurrency` clients, each sending its next request when the last one ended, until
    `seconds` have passed (requests under way then still finish and count)."""
    import threading
    results, lock = [], threading.Lock()
    deadline = time.perf_counter() + seconds

    def client():
        while time.perf_counter() < deadline:
            r = timed_stream(port, n_predict)
            with lock:
                results.append(r)

    return results, run_threads(client, concurrency)


def scaling_targets(model, workers):
    """(name, command, ready-check port) for the three ways to use the machine's cores."""
    cores = os.cpu_count() or 2
    per_worker = max(1, cores // workers)
    ctx = 2048
    server = [LLAMA_SERVER, "-m", model, "--host", "127.0.0.1", "--metrics", "--slots"]
    targets = []
    port = free_port()
    targets.append((f"1 llama-server, -np 1 -t {cores}",
                    server + ["--port", str(port), "-t", str(cores), "-c", str(ctx), "-np", "1"], port))
    port = free_port()
    targets.append((f"llama-pool, {workers} workers x -np 1 -t {per_worker}",
                    [POOL, "--port", str(port), "--workers", str(workers), "--llama-server", LLAMA_SERVER,
                     "--model", model, "--threads", str(per_worker), "--parallel", "1",
                     "--ctx-size", str(ctx), "--log-level", "warn"], port))
    port = free_port()
    targets.append((f"1 llama-server, -np {workers} -t {cores}",
                    server + ["--port", str(port), "-t", str(cores), "-c", str(ctx * workers),
                              "-np", str(workers)], port))
    return targets


def bench_scaling(models, concurrencies, workers):
    rows, commands = [], []
    for label, model, n_predict, seconds in models:
        for name, cmd, port in scaling_targets(model, workers):
            p = start(cmd, f"scaling-{port}")
            wait_http(port, timeout=300)
            if cmd[0] == POOL:
                wait_pool_ready(port, workers)
            timed_stream(port, 4)  # first-use costs (allocations, page cache) out of the way
            commands.append(" ".join(os.path.basename(c) if c in (LLAMA_SERVER, POOL) else
                                     (f"<{label} model>" if c == model else
                                      ("<port>" if c == str(port) else c)) for c in cmd))
            for conc in concurrencies:
                results, wall = closed_loop(port, conc, seconds, n_predict)
                lat = sorted(r[1] * 1000 for r in results)
                ttft = sorted(r[0] * 1000 for r in results)
                tokens = sum(r[2] for r in results)
                rows.append({"model": label, "target": name, "concurrency": conc,
                             "requests": len(results), "tokens": tokens, "wall_s": wall,
                             "tokens_per_s": tokens / wall, "latency_p50_ms": percentile(lat, 0.5),
                             "latency_p90_ms": percentile(lat, 0.9),
                             "latency_max_ms": lat[-1], "ttft_p50_ms": percentile(ttft, 0.5),
                             "n_predict": n_predict})
                log(f"scaling {label} / {name} / c={conc}: {rows[-1]['tokens_per_s']:.1f} tok/s, "
                    f"latency p50 {rows[-1]['latency_p50_ms']:.0f} ms ({len(results)} requests)")
            stop(p)
    return rows, commands


# --- report --------------------------------------------------------------------------------


def machine():
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {model}, {mem:.0f} GiB, Linux {platform.release()}"


def versions():
    out = []
    for cmd in (["nginx", "-v"], ["haproxy", "-v"], ["wrk", "-v"]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        text = (r.stdout + r.stderr).strip().splitlines()
        out.append(text[0] if text else cmd[0])
    return out


def render_overhead(L, overhead, commands):
    L.append("#### 1. Proxy overhead (POST /completion, wrk)\n")
    L.append("| conns | client | target | req/s | p50 µs | p99 µs | p99.9 µs | added p50 µs | added p99 µs | req/s vs nginx |")
    L.append("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for conns in (1, 64):
        for mode in ("keep-alive", "close"):
            group = {r["target"]: r for r in overhead if r["conns"] == conns and r["mode"] == mode}
            d, n = group["direct"], group["nginx"]
            for name in ("direct", "llama-pool", "nginx", "haproxy"):
                r = group[name]
                added50 = "" if name == "direct" else f"{r['p50_us'] - d['p50_us']:+d}"
                added99 = "" if name == "direct" else f"{r['p99_us'] - d['p99_us']:+d}"
                ratio = "" if name == "direct" else f"{r['rps'] / n['rps']:.2f}"
                err = f" ({r['errors']} errors)" if r["errors"] else ""
                L.append(f"| {conns} | {mode} | {name} | {r['rps']:.0f}{err} | {r['p50_us']} | "
                         f"{r['p99_us']} | {r['p999_us']} | {added50} | {added99} | {ratio} |")
    L.append("\nwrk commands (ports vary per run):\n")
    L.append("```")
    L.extend(commands)
    L.append("```\n")


def render_streaming(L, streaming, args):
    L.append(f"#### 2. Streaming relay ({args.stream_runs} streams of {args.stream_events} events "
             "per target, interleaved, one event per 5 ms)\n")
    L.append("Delivery is from the fake's write of an event (a CLOCK_MONOTONIC stamp inside it) to "
             "the client's read, so the fake's own pacing does not count.\n")
    L.append("| target | time to first event ms | added ms | delivery p50 ms | p99 ms | added p50 ms | added p99 ms | proxy CPU ms per 1000 events |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in streaming:
        cpu = "" if r["cpu_ms_per_1000_events"] is None else f"{r['cpu_ms_per_1000_events']:.1f}"
        L.append(f"| {r['target']} | {r['ttfb_ms']:.2f} | {r['added_ttfb_ms']:+.2f} | "
                 f"{r['delivery_p50_ms']:.3f} | {r['delivery_p99_ms']:.3f} | "
                 f"{r['added_event_p50_ms']:+.3f} | {r['added_event_p99_ms']:+.3f} | {cpu} |")
    L.append("")


def render_scaling(L, scaling, scaling_commands, args):
    L.append(f"#### 3. Real-worker scaling (real llama-server, {args.scaling_workers} workers or slots "
             f"on {os.cpu_count()} cores, closed loop)\n")
    L.append("Each client sends `POST /completion` (streamed, `ignore_eos`, fixed `n_predict`) and "
             "the next one when it ends; tokens/s is the total over all clients. Commands:\n")
    L.append("```")
    L.extend(scaling_commands)
    L.append("```\n")
    L.append("| model | target | clients | requests | tokens/s | vs 1 server -np 1 | latency p50 ms | p90 ms | max ms | first token p50 ms |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in scaling:
        base = next(b for b in scaling if b["model"] == r["model"] and
                    b["concurrency"] == r["concurrency"] and b["target"].startswith("1 llama-server, -np 1 "))
        ratio = r["tokens_per_s"] / base["tokens_per_s"] if base["tokens_per_s"] else 0
        L.append(f"| {r['model']} | {r['target']} | {r['concurrency']} | {r['requests']} | "
                 f"{r['tokens_per_s']:.1f} | {ratio:.2f} | {r['latency_p50_ms']:.0f} | "
                 f"{r['latency_p90_ms']:.0f} | {r['latency_max_ms']:.0f} | {r['ttft_p50_ms']:.0f} |")
    L.append("")


def render_memory(L, memory):
    L.append("#### 4. llama-pool memory and threads\n")
    L.append("| state | resident MiB | threads |")
    L.append("|---|---:|---:|")
    for r in memory:
        L.append(f"| {r['state']} | {r['rss_mib']:.1f} | {r['threads']} |")
    L.append("")


def render_affinity(L, affinity, args):
    L.append(f"#### 5. Prefix affinity vs round-robin (2 real workers x 2 slots, demo model, "
             f"{args.affinity_requests} requests over 4 long shared prefixes, concurrency 2)\n")
    L.append("| balancer | prompt tokens evaluated | time to first token p50 ms | p90 ms | wall s |")
    L.append("|---|---:|---:|---:|---:|")
    for r in affinity:
        L.append(f"| {r['policy']} | {r['prompt_tokens_evaluated']} | {r['ttft_p50_ms']:.1f} | "
                 f"{r['ttft_p90_ms']:.1f} | {r['wall_s']:.1f} |")


def run_header(L, title, args, load_at_start, wall_s):
    """The heading of a results block: date, machine, load average, command, peers."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    L.append(f"### {title} {now}\n")
    L.append(f"- Machine: {machine()}, load average {' '.join(load_at_start)} at the start and "
             f"{' '.join(open('/proc/loadavg').read().split()[:3])} at the end (1, 5, 15 min)")
    only = f" --only {args.only}" if args.only else ""
    L.append(f"- Command: `make bench` (`python3 scripts/bench/bench.py --write "
             f"--seconds {args.seconds}{only}`), {wall_s / 60:.1f} minutes")
    L.append(f"- Peers: {'; '.join(versions())}. Their configs: `scripts/bench/nginx.conf.in`, "
             f"`scripts/bench/haproxy.cfg.in`.")


def render_targets18(args, table, load_at_start, wall_s):
    L = []
    run_header(L, "Issue 18 targets, run of", args, load_at_start, wall_s)
    L.append("")
    L.append(table)
    return "\n".join(L)


def render(results, args, wall_s):
    L = []
    run_header(L, "Run of", args, LOAD_AT_START, wall_s)
    L.append("- Upstream: one standalone `fake-llama-server` in fast mode (one-token reply), the "
             "same process behind every target: direct, llama-pool (`--workers 0 --upstream "
             "http://127.0.0.1:<fake>`), nginx and HAProxy. Load: wrk from the same machine, so "
             "client, proxy and upstream share the cores.\n")
    if "overhead" in results:
        render_overhead(L, *results["overhead"])
    if "streaming" in results:
        render_streaming(L, results["streaming"], args)
    if "scaling" in results:
        render_scaling(L, *results["scaling"], args)
    if "memory" in results:
        render_memory(L, results["memory"])
    if "affinity" in results:
        render_affinity(L, results["affinity"], args)
    if "summarize" in results:
        chars, table = results["summarize"]
        L.append(f"\n#### 6. Summarizing a {chars:,}-character document: the n8n node's "
                 f"sequential loop vs POST /v1/summarize (real llama-server, demo model, "
                 f"`ignore_eos`)\n\n{table}")
    if "groups" in results:
        L.append("\n#### 7. Model groups: a cold start and a swap under the worker budget "
                 "(real llama-server, demo model, one worker per group)\n\n" + results["groups"])
    if "fairness" in results:
        L.append("\n#### 8. Fair admission (a flood by one client key) and the stall watchdog\n\n"
                 + results["fairness"])
    if "scrape" in results:
        L.append("\n#### 9. /metrics under a 20 Hz scrape while the pool serves (fake workers)\n\n"
                 + results["scrape"])
    if "work" in results:
        L.append("\n#### 10. Work that survives: an embeddings batch over 2 workers vs 1, "
                 "and a summary job resumed after a SIGKILL (real llama-server, demo model, "
                 "`--parallel 2`)\n\n" + results["work"])
    if "overhead" in results or "streaming" in results:
        L.append("\n#### The peers' configs, as run (@PORT@ and @UPSTREAM@ are filled in per run)\n")
        for name in ("nginx.conf.in", "haproxy.cfg.in"):
            text = open(os.path.join(BENCH_DIR, name)).read().rstrip("\n")
            L.append(f"`scripts/bench/{name}`:\n\n```\n{text}\n```\n")
    return "\n".join(L) + "\n"


def bench_summarize(chars):
    """Section 6, issue 8: scripts/bench/summarize_bench.py on 1 and 2 workers."""
    sys.path.insert(0, BENCH_DIR)
    import summarize_bench
    args = argparse.Namespace(llama_pool=POOL, llama_server=LLAMA_SERVER, model=MODEL,
                              chars=chars)
    return chars, summarize_bench.run(args)


def bench_groups(rounds):
    """Section 7, issue 15: scripts/bench/groups_bench.py (cold start, swap under a budget)."""
    sys.path.insert(0, BENCH_DIR)
    import groups_bench
    args = argparse.Namespace(llama_pool=POOL, llama_server=LLAMA_SERVER, model=MODEL,
                              rounds=rounds)
    return groups_bench.run(args)


def bench_fairness(rounds):
    """Section 8, issue 19: scripts/bench/fairness_bench.py (flood fair vs FIFO, stall)."""
    sys.path.insert(0, BENCH_DIR)
    import fairness_bench
    args = argparse.Namespace(llama_pool=POOL, fake_worker=FAKE, llama_server=LLAMA_SERVER,
                              model=MODEL, rounds=rounds)
    return fairness_bench.run(args)


def bench_scrape(seconds, workers):
    """Section 9, issue 20: scripts/bench/scrape_bench.py (16 workers, 20 Hz)."""
    sys.path.insert(0, BENCH_DIR)
    import scrape_bench
    args = argparse.Namespace(llama_pool=POOL, fake=FAKE, workers=workers, hz=20, seconds=seconds)
    return scrape_bench.run(args)


def bench_work(rounds, chars, inputs):
    """Section 10, issue 23: scripts/bench/work_bench.py (embeddings fan-out, resumed job)."""
    sys.path.insert(0, BENCH_DIR)
    import work_bench
    args = argparse.Namespace(llama_pool=POOL, llama_server=LLAMA_SERVER, model=MODEL,
                              rounds=rounds, chars=chars, inputs=inputs)
    return work_bench.run(args)


def bench_targets18(args):
    """Issue 18, item 5: scripts/bench/targets18_bench.py (targets (a) to (e) against nginx).
    Returns its table with the load average at its own start and its wall time."""
    sys.path.insert(0, BENCH_DIR)
    import targets18_bench
    load, started = open("/proc/loadavg").read().split()[:3], time.time()
    table = targets18_bench.run(argparse.Namespace(
        seconds=args.seconds, smoke=args.smoke, build=args.build, llama_server=LLAMA_SERVER,
        model=MODEL))
    return table, load, time.time() - started


def write_results(text, marker="results"):
    path = os.path.join(ROOT, "docs", "BENCHMARKS.md")
    doc = open(path).read()
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    open(path, "w").write(head + begin + "\n" + text + end + tail)
    log(f"wrote {path}")


def main():
    global TMP, POOL, FAKE, LLAMA_SERVER, MODEL
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a moment of each part; writes nothing")
    parser.add_argument("--write", action="store_true", help="update docs/BENCHMARKS.md")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--stream-runs", type=int, default=10)
    parser.add_argument("--stream-events", type=int, default=200)
    parser.add_argument("--affinity-requests", type=int, default=48)
    parser.add_argument("--scaling-seconds", type=float, default=10,
                        help="per cell of the scaling table (the larger model gets 1.5 times this)")
    parser.add_argument("--scaling-workers", type=int, default=2)
    parser.add_argument("--large-model", default="1024x8",
                        help="shape DIMxLAYERS of the larger random-weight model")
    parser.add_argument("--summarize-chars", type=int, default=50000,
                        help="size of the document summarized in section 6")
    parser.add_argument("--build", default=os.path.join(ROOT, "build"))
    parser.add_argument("--only", help=f"comma-separated sections to run: {','.join(SECTIONS)} "
                                       "(with --write, only they are written)")
    args = parser.parse_args()
    # The sections' modules import this file as `bench`: one module, one set of processes.
    sys.modules.setdefault("bench", sys.modules[__name__])
    if args.only and not set(args.only.split(",")) <= set(SECTIONS):
        sys.exit(f"bench: --only takes sections among {','.join(SECTIONS)}")
    if args.smoke:
        args.seconds, args.stream_runs, args.stream_events, args.affinity_requests = 1, 1, 10, 4
        args.scaling_seconds = 0.5
    for tool in ("wrk", "nginx", "haproxy"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is missing (make deps-extra installs it)")
    TMP = tempfile.mkdtemp(prefix="llama-pool-bench-")
    POOL = os.path.join(args.build, "llama-pool")
    FAKE = os.path.join(args.build, "fake-llama-server")
    toolchain = os.path.join(ROOT, "scripts", "llama-toolchain.sh")
    LLAMA_SERVER = subprocess.check_output(["bash", toolchain, "server-path"], text=True).strip()
    MODEL = subprocess.check_output(["bash", toolchain, "model-path"], text=True).strip()
    dim, layers = args.large_model.split("x")
    large_model = subprocess.check_output(["bash", toolchain, "model-path", dim, layers],
                                          text=True).strip()
    raise_nofile(65536)

    started = time.time()
    LOAD_AT_START[:] = open("/proc/loadavg").read().split()[:3]
    run = set(args.only.split(",")) if args.only else set(SECTIONS)
    results = {}

    def section(name, fn):
        if name in run:
            results[name] = fn()
            cleanup()
            PROCESSES.clear()

    section("overhead", lambda: bench_overhead(args.seconds))
    section("streaming", lambda: bench_streaming(args.stream_runs, args.stream_events))
    # The smoke run keeps only the smallest cells; the large model is built all the same, so
    # that its recipe stays tested.
    models = [("demo 288x6", MODEL, 128, args.scaling_seconds),
              (f"random {dim}x{layers}", large_model, 32, args.scaling_seconds * 1.5)]
    section("scaling", lambda: bench_scaling(models[:1] if args.smoke else models,
                                             (1, 2) if args.smoke else (1, 2, 4),
                                             args.scaling_workers))
    section("memory", lambda: bench_memory(20 if args.smoke else 1000, 10 if args.smoke else 200,
                                           1 if args.smoke else 3, 0 if args.smoke else 11))
    section("affinity", lambda: bench_affinity(args.affinity_requests, 2))
    section("summarize", lambda: bench_summarize(3000 if args.smoke else args.summarize_chars))
    section("groups", lambda: bench_groups(1 if args.smoke else 5))
    section("fairness", lambda: bench_fairness(1 if args.smoke else 3))
    # The smoke run starts 4 workers, not 16: it checks the harness within its time limit.
    section("scrape", lambda: bench_scrape(1 if args.smoke else max(args.seconds, 10),
                                           4 if args.smoke else 16))
    # The smoke run keeps the batch small: one worker's time grows faster than its inputs.
    section("work", lambda: bench_work(1 if args.smoke else 5, 3000 if args.smoke else 20000,
                                       8 if args.smoke else 256))
    # Issue 18's targets have a block of their own in docs/BENCHMARKS.md, with its own start.
    section("targets18", lambda: bench_targets18(args))
    targets18 = results.pop("targets18", None)
    if results:
        text = render(results, args, time.time() - started)
        print(text)
        if args.write and not args.smoke:
            write_results(text)
    if targets18:
        text = render_targets18(args, *targets18)
        print(text)
        if args.write and not args.smoke:
            write_results(text, "targets18")
    shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    main()
