#!/usr/bin/env python3
"""Model groups benchmark (issue 15): a cold start and a swap under the worker budget.

On real llama-server workers with the demo model:
- cold start: a group with min_workers 0 and nothing running gets a request; the time until
  its reply includes spawning llama-server, loading the model and the warm-up completion;
- swap: two on-demand groups under workers.max_total 1; each request for the other group
  drains and stops the idle group's worker before its own starts;
- warm: the same request to a group whose worker is ready, for comparison.
Each is repeated and reported as median and max. Standard library only.

Usage: groups_bench.py --llama-pool BIN --llama-server BIN --model GGUF [--rounds N]
"""
import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def log(msg):
    print(f"groups-bench: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, body=None, timeout=600):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request(method, path, json.dumps(body) if body is not None else None,
                 {"Content-Type": "application/json", "Host": "127.0.0.1"})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def completion_seconds(port, group):
    started = time.monotonic()
    status, data = request(port, "POST", "/completion",
                           {"model": group, "prompt": "Hello", "n_predict": 4})
    if status != 200:
        raise RuntimeError(f"{group}: status {status}: {data[:200]!r}")
    return time.monotonic() - started


def wait_listening(port, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            request(port, "GET", "/pool/status", timeout=2)
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the pool did not start listening")


def group_workers(port, name):
    _, data = request(port, "GET", "/pool/status")
    for g in json.loads(data)["groups"]:
        if g["name"] == name:
            return g["workers"]
    return -1


def start_pool(args, tmp, groups, max_total):
    config = {"workers": {"llama_server": args.llama_server, "ctx_size": 2048,
                          "max_total": max_total},
              "groups": groups}
    path = os.path.join(tmp, f"groups-{max_total}.json")
    with open(path, "w") as f:
        json.dump(config, f)
    port = free_port()
    proc = subprocess.Popen([args.llama_pool, "--config", path, "--port", str(port),
                             "--log-level", "warn"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port)
    return proc, port


def stop_pool(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def summary(values):
    return f"{statistics.median(values):.2f} s", f"{max(values):.2f} s"


def run(args):
    tmp = tempfile.mkdtemp(prefix="llama-pool-groups-bench-")
    on_demand = {"workers": 1, "min_workers": 0, "parallel": 1}
    rows = []
    try:
        # Cold start: the group is stopped between rounds through the admin route.
        proc, port = start_pool(args, tmp, [dict(name="cold", model=args.model, **on_demand)], 0)
        try:
            cold, warm = [], []
            for _ in range(args.rounds):
                cold.append(completion_seconds(port, "cold"))
                warm.append(completion_seconds(port, "cold"))
                request(port, "POST", "/pool/groups/cold/stop")
                deadline = time.monotonic() + 60
                while group_workers(port, "cold") != 0 and time.monotonic() < deadline:
                    time.sleep(0.05)
            rows.append(("warm request (worker ready)", *summary(warm)))
            rows.append(("cold start (group stopped)", *summary(cold)))
        finally:
            stop_pool(proc)
        # Swap: two groups, one process allowed; every request evicts the other group.
        groups = [dict(name="a", model=args.model, **on_demand),
                  dict(name="b", model=args.model, **on_demand)]
        proc, port = start_pool(args, tmp, groups, 1)
        try:
            completion_seconds(port, "a")
            swaps = []
            for i in range(args.rounds):
                swaps.append(completion_seconds(port, "b" if i % 2 == 0 else "a"))
            rows.append(("swap under max_total 1 (evict, start)", *summary(swaps)))
        finally:
            stop_pool(proc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [f"| case ({args.rounds} rounds, 4-token completion) | median | max |",
             "| --- | --- | --- |"]
    lines += [f"| {name} | {median} | {most} |" for name, median, most in rows]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--llama-pool", required=True)
    parser.add_argument("--llama-server", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    print(run(parser.parse_args()))


if __name__ == "__main__":
    main()
