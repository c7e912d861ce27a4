#!/usr/bin/env python3
"""Many slow streams at once (issue 18: an event loop for the data path, measured).

1000 concurrent SSE streams (POST /completion, stream=true) at 5 events per second each, from
one fake-llama-server that stamps its events, through each target in turn:
  direct, nginx, llama-pool (--workers 0 --upstream, like nginx), and the Boost.Asio relay
  prototype (test/bench/asio_relay.cpp, target asio_relay_bench).
For each target, a fresh fake; the streams are opened, and once all deliver, a window of
--seconds is measured: events received, the proxy's CPU (its whole process tree, schedstat),
the fake's CPU, each event's delivery time (the fake's CLOCK_MONOTONIC stamp to our read),
the proxy's RSS and threads in the middle of the window, and what the rest of the machine
used meanwhile (/proc/stat busy time minus ours: other people's work, in cores). The client is one asyncio loop
in this process, on the same cores. Reuses bench.py's process helpers. Standard library only.

Usage: fanout_bench.py [--build DIR] [--streams 1000] [--rate 5] [--seconds 20]
                       [--targets direct,nginx,llama-pool,asio] [--repeat 1]
"""
import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402  (the shared process helpers)

STAMP = re.compile(rb'"t_mono_ns":(\d+)')


def machine_busy_seconds():
    """CPU time the whole machine spent busy (all cores, everyone's processes), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


class Window:
    """What the streams saw between start and end (monotonic ns)."""

    def __init__(self):
        self.start = None
        self.end = None
        self.events = 0
        self.delays = []
        self.started = 0  # streams that delivered their first event
        self.failed = 0


async def one_stream(port, body, window, stop):
    req = (f"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    except OSError:
        window.failed += 1
        return
    writer.write(req)
    buf, first = b"", True
    try:
        while not stop.is_set():
            chunk = await reader.read(65536)
            now = time.monotonic_ns()
            if not chunk:
                break
            buf += chunk
            end = buf.rfind(b"\n\n")
            if end < 0:
                continue
            stamps = STAMP.findall(buf[:end])
            buf = buf[end + 2:]
            if stamps and first:
                first = False
                window.started += 1
            if window.start is not None and window.end is None and now >= window.start:
                window.events += len(stamps)
                window.delays += [(now - int(s)) / 1e6 for s in stamps]
    except (OSError, asyncio.IncompleteReadError):
        window.failed += 1
    finally:
        writer.close()


def tree_rss_threads(pid):
    """RSS bytes and threads of a process tree (nginx's master and workers)."""
    rss, threads = 0, 0
    for p in B.tree_pids(pid):
        try:
            r, t = B.rss_and_threads(p)
            rss, threads = rss + r, threads + t
        except OSError:
            pass  # a process that just ended
    return rss, threads


async def run_streams(port, streams, rate, seconds, proc, fake_proc):
    """Opens the streams, waits until all deliver, measures a window; returns the row."""
    events_per_stream = int(rate * (seconds + 60))
    body = json.dumps({"prompt": "x", "max_tokens": events_per_stream, "stream": True}).encode()
    window, stop = Window(), asyncio.Event()
    tasks = []
    for i in range(streams):
        tasks.append(asyncio.ensure_future(one_stream(port, body, window, stop)))
        if i % 50 == 49:
            await asyncio.sleep(0.05)  # a ramp, not a SYN flood
    deadline = time.monotonic() + 60
    while window.started + window.failed < streams and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.sleep(1)
    pids = [proc.pid] if proc else []
    cpu0 = B.tree_cpu_ns(proc.pid) if proc else 0
    fake0 = B.tree_cpu_ns(fake_proc.pid)
    busy0, client0 = machine_busy_seconds(), time.process_time()
    window.start = time.monotonic_ns()
    await asyncio.sleep(seconds / 2)
    rss, threads = tree_rss_threads(pids[0]) if pids else (0, 0)
    await asyncio.sleep(seconds / 2)
    window.end = time.monotonic_ns()
    cpu = (B.tree_cpu_ns(proc.pid) - cpu0) / 1e9 if proc else None
    fake_cpu = (B.tree_cpu_ns(fake_proc.pid) - fake0) / 1e9
    busy, client = machine_busy_seconds() - busy0, time.process_time() - client0
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    delays = sorted(window.delays)
    elapsed = (window.end - window.start) / 1e9
    return {
        "started": window.started, "failed": window.failed, "events": window.events,
        "events_per_s": window.events / elapsed,
        "cpu_ms_per_1000_events": cpu * 1e6 / window.events if cpu is not None and window.events else None,
        "cpu_percent": cpu * 100 / elapsed if cpu is not None else None,
        "fake_cpu_ms_per_1000_events": fake_cpu * 1e6 / max(window.events, 1),
        "client_cpu_percent": client * 100 / elapsed,
        # What the rest of the machine (other people's builds) used meanwhile, in cores.
        "others_cores": max(0.0, busy - client - fake_cpu - (cpu or 0)) / elapsed,
        "rss_mib": rss / 2**20 if proc else None, "threads": threads if proc else None,
        "p50_ms": B.percentile(delays, 0.5) if delays else None,
        "p99_ms": B.percentile(delays, 0.99) if delays else None,
    }


async def complete_stream(port, body, tally):
    """One stream read up to its last event (the fake's "stop":true); counts it in `tally`
    as completed or failed (refused, cut, or not a 200)."""
    req = (f"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    except OSError:
        tally["failed"] += 1
        return
    tally["open"] += 1
    tally["peak_open"] = max(tally["peak_open"], tally["open"])
    ok = False
    try:
        writer.write(req)
        head = await reader.readuntil(b"\r\n\r\n")
        good, buf = head.startswith(b"HTTP/1.1 200"), b""
        while good and b'"stop":true' not in buf:
            chunk = await reader.read(65536)
            good = bool(chunk)
            buf = buf[-64:] + chunk  # a marker split across two reads still matches
        ok = good  # not reached when cancelled at the deadline
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        ok = False
    finally:
        tally["open"] -= 1
        tally["completed" if ok else "failed"] += 1
        writer.close()


async def run_complete(port, streams, rate, events, proc):
    """`streams` streams of `events` events each, opened in a quick ramp so that all are open
    at once, each read to its end. The proxy's peak RSS and threads are sampled every 0.5 s."""
    body = json.dumps({"prompt": "x", "max_tokens": events, "stream": True}).encode()
    tally = {"completed": 0, "failed": 0, "open": 0, "peak_open": 0}
    t0 = time.monotonic()
    tasks = []
    for i in range(streams):
        tasks.append(asyncio.ensure_future(complete_stream(port, body, tally)))
        if i % 200 == 199:
            await asyncio.sleep(0.05)  # a ramp, not a SYN flood
    deadline = t0 + events / rate + 120
    rss, threads, pending = 0, 0, set(tasks)
    while pending and time.monotonic() < deadline:
        if proc:
            r, t = tree_rss_threads(proc.pid)
            rss, threads = max(rss, r), max(threads, t)
        _, pending = await asyncio.wait(pending, timeout=0.5)
    for t in pending:
        t.cancel()  # counted as failed by complete_stream
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"streams": streams, "completed": tally["completed"], "failed": tally["failed"],
            "peak_open": tally["peak_open"], "wall_s": time.monotonic() - t0,
            "rss_mib": rss / 2**20 if proc else None, "threads": threads if proc else None}


def start_target(name, upstream, build, streams):
    """The proxy `name` in front of `upstream`, with room for `streams` at once."""
    if name == "direct":
        return upstream, None
    port = B.free_port()
    if name == "nginx":
        return port, B.start_nginx(port, upstream, max(4096, 2 * streams + 64))
    if name == "llama-pool":
        return port, B.start_pool(port, name="pool-fanout", upstream=upstream,
                                  connections=max(4096, streams + 64))
    if name == "asio":
        p = B.start([os.path.join(build, "asio_relay_bench"), "--port", str(port), "--upstream",
                     f"127.0.0.1:{upstream}", "--threads", str(os.cpu_count() or 2)], "asio")
        B.wait_http(port)
        return port, p
    raise ValueError(name)


def measure(name, streams, rate, build, seconds=None, events=None):
    """One target's row, behind a fresh fake: a window of `seconds` over long streams
    (run_streams), or, given `events`, streams of that many events read to their end
    (run_complete). Stops what it started."""
    load = open("/proc/loadavg").read().split()[:3]
    upstream = B.free_port()
    fake = B.start([B.FAKE, "--port", str(upstream), "--parallel", str(streams + 64),
                    "--max-connections", str(streams + 64), "--tokens-per-second", str(rate),
                    "--stamp-events"], f"fake-{upstream}")
    B.wait_http(upstream)
    port, proc = start_target(name, upstream, build, streams)
    if events is None:
        row = asyncio.run(run_streams(port, streams, rate, seconds, proc, fake))
    else:
        row = asyncio.run(run_complete(port, streams, rate, events, proc))
    row.update({"target": name, "load_before": " ".join(load),
                "load_after": " ".join(open("/proc/loadavg").read().split()[:3])})
    B.log(f"fanout {json.dumps(row)}")
    for p in (proc, fake):
        if p:
            B.stop(p)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--build", default=os.path.join(B.ROOT, "build"))
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=5)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--targets", default="direct,nginx,llama-pool,asio")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    B.TMP = tempfile.mkdtemp(prefix="llama-pool-fanout-")
    B.POOL = os.path.join(args.build, "llama-pool")
    B.FAKE = os.path.join(args.build, "fake-llama-server")
    B.raise_nofile(65536)
    rows = []
    for rep in range(args.repeat):
        for name in args.targets.split(","):
            row = measure(name, args.streams, args.rate, args.build, args.seconds)
            row["round"] = rep + 1
            rows.append(row)
    print(render(rows, args))


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def render(rows, args):
    L = [f"{args.streams} streams at {args.rate:g} events/s each, {args.seconds:g} s window; "
         f"machine: {B.machine()}\n",
         "| round | target | streams delivering | events/s | proxy CPU ms per 1000 events | "
         "proxy CPU % | fake CPU ms per 1000 events | client CPU % | RSS MiB | threads | "
         "delivery p50 ms | p99 ms | others' cores busy | load before → after |",
         "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        L.append(f"| {r['round']} | {r['target']} | {r['started']} | {r['events_per_s']:.0f} | "
                 f"{fmt(r['cpu_ms_per_1000_events'], '.1f')} | {fmt(r['cpu_percent'], '.1f')} | "
                 f"{r['fake_cpu_ms_per_1000_events']:.1f} | {r['client_cpu_percent']:.0f} | "
                 f"{fmt(r['rss_mib'], '.1f')} | {fmt(r['threads'], 'd')} | "
                 f"{fmt(r['p50_ms'], '.2f')} | {fmt(r['p99_ms'], '.2f')} | "
                 f"{r['others_cores']:.2f} | {r['load_before']} → {r['load_after']} |")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
