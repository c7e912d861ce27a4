#!/usr/bin/env python3
"""Where a relayed request's cost goes: llama-pool builds side by side (and nginx), in front of
one fake worker, on the four wrk cells of the overhead benchmark.

For each cell and target, interleaved over --reps runs (medians reported, so that other load
on a shared machine moves every target alike):
  - req/s, p50 and p99 latency (wrk), and the proxy's CPU per request (/proc, all threads);
  - with --syscalls (needs perf and tracepoints): system calls and context switches per
    request, counted by `perf stat -e syscalls:sys_enter_*` on the proxy process;
  - with --callgrind (needs valgrind): user-space instructions per request of each llama-pool
    build, 1000 sequential requests, keep-alive and Connection: close.

  python3 scripts/bench/profile.py --pool new=build/llama-pool --pool old=/tmp/old/llama-pool \\
      --reps 5 --syscalls --callgrind

Not part of `make bench` (profilers are optional: `make deps-extra` installs them).
Standard library only.
"""
import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the harness's process helpers)

CELLS = [(1, "ka"), (1, "close"), (64, "ka"), (64, "close")]
SYSCALLS = ["recvfrom", "sendto", "read", "write", "readv", "writev", "poll", "epoll_wait",
            "epoll_ctl", "futex", "accept4", "close", "shutdown", "setsockopt", "getpeername",
            "getrandom", "clone3", "madvise", "rt_sigprocmask", "munmap"]


def wrk_cmd(port, conns, mode, seconds):
    cmd = ["wrk", f"-t{1 if conns == 1 else 2}", f"-c{conns}", f"-d{seconds}s", "-s",
           os.path.join(bench.BENCH_DIR, "report.lua")]
    if mode == "close":
        cmd += ["-H", "Connection: close"]
    return cmd + [f"http://127.0.0.1:{port}/completion"]


def wrk_json(out):
    return json.loads(next(l for l in out.splitlines() if l.startswith("JSON "))[5:])


def run_cell(port, pids, conns, mode, seconds):
    c0 = sum(bench.proc_cpu_seconds(p) for p in pids)
    r = wrk_json(subprocess.run(wrk_cmd(port, conns, mode, seconds), capture_output=True,
                                text=True).stdout)
    c1 = sum(bench.proc_cpu_seconds(p) for p in pids)
    n = max(1, r["requests"])
    return {"rps": r["requests"] / (r["duration_us"] / 1e6), "p50": r["p50_us"],
            "p99": r["p99_us"], "cpu_us": (c1 - c0) * 1e6 / n, "errors": r["errors"]}


def syscalls_per_request(port, pid, conns, mode, seconds):
    events = ",".join([f"syscalls:sys_enter_{s}" for s in SYSCALLS] + ["context-switches"])
    out_file = os.path.join(bench.TMP, "perf-stat.txt")
    perf = subprocess.Popen(["perf", "stat", "-x,", "-e", events, "-p", str(pid), "-o", out_file,
                             "--", "sleep", str(seconds + 1)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    r = wrk_json(subprocess.run(wrk_cmd(port, conns, mode, seconds), capture_output=True,
                                text=True).stdout)
    perf.wait()
    counts = {}
    for line in open(out_file):
        fields = line.strip().split(",")
        if len(fields) > 2 and fields[0].isdigit():
            counts[fields[2].replace("syscalls:sys_enter_", "")] = int(fields[0]) / r["requests"]
    return counts


def callgrind_per_request(binary, upstream, mode, n=1000):
    """User-space instructions per request of one llama-pool build under callgrind: counters
    zeroed after a warm-up of n requests, dumped after n more."""
    port = bench.free_port()
    out = os.path.join(bench.TMP, f"callgrind-{port}.out")
    p = bench.start(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", binary,
                     "--port", str(port), "--workers", "0", "--upstream",
                     f"http://127.0.0.1:{upstream}", "--log-level", "warn"], f"callgrind-{port}")
    bench.wait_http(port, timeout=120)
    body = b'{"prompt":"x","max_tokens":1}'
    extra = b"Connection: close\r\n" if mode == "close" else b""
    request = (b"POST /completion HTTP/1.1\r\nHost: x\r\n" + extra +
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    def requests(count):
        import socket
        s = None
        for _ in range(count):
            if s is None:
                s = socket.create_connection(("127.0.0.1", port))
            s.sendall(request)
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += s.recv(65536)
            head, _, rest = buf.partition(b"\r\n\r\n")
            length = int(next(l for l in head.split(b"\r\n")
                              if l.lower().startswith(b"content-length")).split(b":")[1])
            while len(rest) < length:
                rest += s.recv(65536)
            if mode == "close":
                s.close()
                s = None

    requests(n)
    subprocess.run(["callgrind_control", "-z", str(p.pid)], capture_output=True)
    requests(n)
    subprocess.run(["callgrind_control", "-d", str(p.pid)], capture_output=True)
    bench.stop(p, timeout=60)
    total = 0
    for f in os.listdir(bench.TMP):
        if f.startswith(f"callgrind-{port}.out."):
            for line in open(os.path.join(bench.TMP, f)):
                if line.startswith("summary:"):
                    total += int(line.split()[1])
    return total / n


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", action="append", required=True, metavar="LABEL=PATH",
                        help="a llama-pool binary to profile (repeatable)")
    parser.add_argument("--fake", default=os.path.join(bench.ROOT, "build", "fake-llama-server"))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--no-nginx", action="store_true")
    parser.add_argument("--syscalls", action="store_true")
    parser.add_argument("--callgrind", action="store_true")
    args = parser.parse_args()
    bench.TMP = tempfile.mkdtemp(prefix="llama-pool-profile-")
    bench.FAKE = args.fake
    upstream = bench.free_port()
    bench.start_fake(upstream, ["--tokens-per-second", "1000000"])
    targets = {}
    for spec in args.pool:
        label, path = spec.split("=", 1)
        bench.POOL = path
        port = bench.free_port()
        p = bench.start_pool(port, upstream=upstream, name=f"pool-{label}")
        targets[label] = (port, [p.pid])
    if not args.no_nginx:
        port = bench.free_port()
        p = bench.start_nginx(port, upstream)
        time.sleep(0.3)
        targets["nginx"] = (port, bench.tree_pids(p.pid))

    results, rng = {}, random.Random(1)
    for rep in range(args.reps):
        for conns, mode in CELLS:
            order = list(targets)
            rng.shuffle(order)
            for label in order:
                port, pids = targets[label]
                results.setdefault((conns, mode, label), []).append(
                    run_cell(port, pids, conns, mode, args.seconds))
        load = open("/proc/loadavg").read().split()[:3]
        print(f"profile: rep {rep + 1}/{args.reps}, load average {' '.join(load)}",
              file=sys.stderr, flush=True)

    print(f"| conns | client | target | req/s | p50 µs | p99 µs | CPU µs/request | errors |")
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    for conns, mode in CELLS:
        for label in targets:
            runs = results[(conns, mode, label)]
            med = lambda k: statistics.median(r[k] for r in runs)
            print(f"| {conns} | {mode} | {label} | {med('rps'):.0f} | {med('p50'):.0f} | "
                  f"{med('p99'):.0f} | {med('cpu_us'):.1f} | {sum(r['errors'] for r in runs)} |")
    print(f"\n(medians of {args.reps} interleaved runs of {args.seconds} s)\n")

    if args.syscalls:
        print("| conns | client | target | per request |")
        print("|---:|---|---|---|")
        for conns, mode in CELLS:
            for label, (port, pids) in targets.items():
                if label == "nginx":
                    pid = max(pids)  # the worker process does the work
                else:
                    pid = pids[0]
                counts = syscalls_per_request(port, pid, conns, mode, args.seconds)
                text = ", ".join(f"{k} {v:.2f}" for k, v in sorted(counts.items(),
                                                                   key=lambda kv: -kv[1])
                                 if v >= 0.005)
                print(f"| {conns} | {mode} | {label} | {text} |")
        print()
    if args.callgrind:
        print("| target | client | user-space instructions per request |")
        print("|---|---|---:|")
        for spec in args.pool:
            label, path = spec.split("=", 1)
            for mode in ("ka", "close"):
                print(f"| {label} | {mode} | {callgrind_per_request(path, upstream, mode):,.0f} |",
                      flush=True)
    bench.cleanup()
    shutil.rmtree(bench.TMP, ignore_errors=True)


if __name__ == "__main__":
    main()
