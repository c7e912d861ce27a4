#!/usr/bin/env python3
"""/metrics under an endpoint picker's scrape (issue 20).

The Gateway API Inference Extension's endpoint picker scrapes every pool pod's /metrics
every 50 ms. This starts llama-pool with 16 fake workers (each /metrics scrape of the pool
asks every worker for its own and merges them), puts it under a closed-loop completion load,
and measures, in three phases of equal length:
- load only: the pool's CPU while it serves;
- load and a 20 Hz scrape of /metrics (one keep-alive connection, as a scraper keeps): the
  pool's CPU again, each scrape's latency, and the workers' CPU spent answering;
- the 20 Hz scrape alone, on an idle pool.
CPU is read from /proc (utime+stime of the pool process; the workers' processes summed
apart). Standard library only.

Usage: scrape_bench.py --llama-pool BIN --fake BIN [--workers 16] [--hz 20] [--seconds 10]
"""
import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time


def log(msg):
    print(f"scrape-bench: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except OSError:
                pass
    return found


def workers_cpu(pids):
    total = 0.0
    for p in pids:
        try:
            total += cpu_seconds(p)
        except OSError:
            pass
    return total


def status(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/pool/status")
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def wait_ready(port, workers, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            code, data = status(port)
            if code == 200 and json.loads(data)["totals"]["ready"] >= workers:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"llama-pool on {port}: {workers} workers not ready in {timeout} s")


class Load:
    """Closed-loop completion clients, each on its own keep-alive connection."""

    def __init__(self, port, clients):
        self.port, self.stop, self.done = port, threading.Event(), 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client) for _ in range(clients)]

    def client(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        body = json.dumps({"prompt": "x", "n_predict": 16})
        while not self.stop.is_set():
            try:
                conn.request("POST", "/completion", body, {"Content-Type": "application/json"})
                conn.getresponse().read()
                with self.lock:
                    self.done += 1
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()


def scrape(port, hz, seconds):
    """GET /metrics every 1/hz s for `seconds`; a scrape that overruns its slot is followed by
    the next at once (never two at a time). Returns latencies (s) and the last body size."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    latencies, size = [], 0
    start = time.monotonic()
    k = 0
    while True:
        due = start + k / hz
        now = time.monotonic()
        if due - start >= seconds:
            break
        if due > now:
            time.sleep(due - now)
        t0 = time.monotonic()
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        body = r.read()
        latencies.append(time.monotonic() - t0)
        if r.status != 200:
            raise RuntimeError(f"/metrics answered {r.status}")
        size = len(body)
        k += 1
    conn.close()
    return latencies, size


def phase(pool, workers, seconds, load_port=None, clients=0, scrape_hz=0):
    pool_before, workers_before = cpu_seconds(pool.pid), workers_cpu(workers)
    started = time.monotonic()
    latencies, size, done = [], 0, 0
    if clients:
        with Load(load_port, clients) as load:
            if scrape_hz:
                latencies, size = scrape(load_port, scrape_hz, seconds)
            else:
                time.sleep(seconds)
            done = load.done
    elif scrape_hz:
        latencies, size = scrape(load_port, scrape_hz, seconds)
    else:
        time.sleep(seconds)
    wall = time.monotonic() - started
    return {"pool_cpu": (cpu_seconds(pool.pid) - pool_before) / wall,
            "workers_cpu": (workers_cpu(workers) - workers_before) / wall,
            "requests_per_s": done / wall, "latencies": sorted(latencies), "size": size,
            "scrapes_per_s": len(latencies) / wall}


def pct(values, q):
    return values[min(len(values) - 1, int(len(values) * q))] * 1000 if values else float("nan")


def run(args):
    tmp = tempfile.mkdtemp(prefix="llama-pool-scrape-bench-")
    port = free_port()
    cmd = [args.llama_pool, "--port", str(port), "--workers", str(args.workers),
           "--llama-server", args.fake, "--model", args.llama_pool, "--parallel", "2",
           "--queue-max", "10000", "--log-level", "warn",
           "--worker-arg", "--tokens-per-second", "--worker-arg", "400"]
    out = open(os.path.join(tmp, "pool.log"), "w")
    pool = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(port, args.workers)
        workers = children(pool.pid)
        clients = args.workers  # half the slots busy: a pool that serves, not one saturated
        log(f"{args.workers} workers ready; {args.seconds} s per phase")
        rows = [("load, no scrape", phase(pool, workers, args.seconds, port, clients, 0)),
                (f"load + {args.hz:g} Hz scrape", phase(pool, workers, args.seconds, port,
                                                        clients, args.hz)),
                (f"idle + {args.hz:g} Hz scrape", phase(pool, workers, args.seconds, port, 0,
                                                        args.hz))]
    finally:
        os.killpg(pool.pid, signal.SIGTERM)
        pool.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [f"llama-pool with {args.workers} fake workers (2 slots each, 400 tokens/s), "
             f"{clients} closed-loop clients (POST /completion, n_predict 16) where there is "
             f"load; {args.seconds} s per phase; /metrics of {rows[1][1]['size']:,} bytes "
             f"(the pool's families and {args.workers} workers' merged).\n",
             "| phase | completions/s | scrapes/s | /metrics p50 ms | p90 ms | p99 ms | max ms "
             "| pool CPU (cores) | workers' CPU (cores) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows:
        lat = r["latencies"]
        scraped = bool(lat)
        lines.append(
            f"| {name} | {r['requests_per_s']:.0f} | {r['scrapes_per_s']:.1f} | "
            + (f"{pct(lat, 0.5):.1f} | {pct(lat, 0.9):.1f} | {pct(lat, 0.99):.1f} | "
               f"{lat[-1] * 1000:.1f}" if scraped else "- | - | - | -")
            + f" | {r['pool_cpu']:.3f} | {r['workers_cpu']:.3f} |")
        log(lines[-1])
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--llama-pool", required=True)
    parser.add_argument("--fake", required=True)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--hz", type=float, default=20)
    parser.add_argument("--seconds", type=float, default=10)
    print(run(parser.parse_args()))


if __name__ == "__main__":
    main()
