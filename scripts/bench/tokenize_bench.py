#!/usr/bin/env python3
"""Requests that take no generation slot (issue 18): POST /tokenize on a real llama-server,
keep-alive, through each target in turn: direct, nginx, llama-pool in front of the same
server (--workers 0 --upstream, like nginx). The server runs -np SLOTS (4 by default), so
before the fix the pool let at most SLOTS /tokenize through at once, however many clients
sent them. wrk with CONNS connections (16 by default) for SECONDS each; prints requests/s,
p50 and p99, and each target's throughput as a share of nginx's. Reuses bench.py's helpers.

Usage: tokenize_bench.py [--build DIR] [--conns 16] [--seconds 10] [--slots 4] [--repeat 1]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402  (the shared process helpers)

LUA = """
wrk.method = "POST"
wrk.body = '{"content":"The quick brown fox jumps over the lazy dog, twice over."}'
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  io.write(string.format(
    'JSON {"requests":%d,"duration_us":%d,"errors":%d,"p50_us":%d,"p99_us":%d}\\n',
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.status + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def run_wrk(port, conns, seconds, script):
    cmd = ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "-s", script,
           f"http://127.0.0.1:{port}/tokenize"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    line = next(l for l in out.splitlines() if l.startswith("JSON "))
    r = json.loads(line[5:])
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


def run(server, model, conns, seconds, slots=4, repeat=1):
    """llama-server -np `slots` with nginx and llama-pool in front; wrk on each in turn, `repeat`
    rounds. Returns the rows; stops what it started. B.TMP and B.POOL must be set."""
    script = os.path.join(B.TMP, "tokenize.lua")
    with open(script, "w") as f:
        f.write(LUA)
    upstream = B.free_port()
    procs = [B.start([server, "--model", model, "--port", str(upstream), "-np", str(slots),
                      "-t", "1", "--ctx-size", str(256 * slots)], "llama-server")]
    B.wait_http(upstream, timeout=180)
    targets = {"direct": upstream, "nginx": B.free_port(), "llama-pool": B.free_port()}
    procs.append(B.start_nginx(targets["nginx"], upstream))
    procs.append(B.start_pool(targets["llama-pool"], upstream=upstream))
    rows = []
    for rep in range(repeat):
        for name, port in targets.items():
            load = " ".join(open("/proc/loadavg").read().split()[:3])
            r = run_wrk(port, conns, seconds, script)
            r.update({"target": name, "round": rep + 1, "load": load})
            B.log(f"tokenize {json.dumps(r)}")
            rows.append(r)
    for p in reversed(procs):
        B.stop(p)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--build", default=os.path.join(B.ROOT, "build"))
    parser.add_argument("--conns", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    B.TMP = tempfile.mkdtemp(prefix="llama-pool-tokenize-")
    B.POOL = os.path.join(args.build, "llama-pool")
    toolchain = os.path.join(B.ROOT, "scripts", "llama-toolchain.sh")
    server = subprocess.check_output(["bash", toolchain, "server-path"], text=True).strip()
    model = subprocess.check_output(["bash", toolchain, "model-path"], text=True).strip()
    B.raise_nofile(65536)
    rows = run(server, model, args.conns, args.seconds, args.slots, args.repeat)
    print(f"POST /tokenize, keep-alive, {args.conns} connections, {args.seconds} s per run; "
          f"llama-server -np {args.slots} -t 1; machine: {B.machine()}\n")
    print("| round | target | requests/s | of nginx | p50 ms | p99 ms | errors | load |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        nginx = next(x for x in rows if x["round"] == r["round"] and x["target"] == "nginx")
        print(f"| {r['round']} | {r['target']} | {r['rps']:.0f} | {r['rps'] / nginx['rps']:.2f} | "
              f"{r['p50_us'] / 1000:.2f} | {r['p99_us'] / 1000:.2f} | {r['errors']} | {r['load']} |")


if __name__ == "__main__":
    main()
