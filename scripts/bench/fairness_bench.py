#!/usr/bin/env python3
"""Fair admission and the stall watchdog (issue 19), measured.

- flood: one real llama-server worker with one slot. Client A sends 16 completions at once;
  0.3 s after they queue, client B sends one. B's wait is measured when B is its own tenant
  (its own API key: the fair queue) and when B shares A's key (one tenant: what a FIFO queue
  gives), with B alone on an idle pool for reference. Each case is repeated; median and max are reported.
- stall: two fake workers with one slot each, stall_timeout 2 s, health probes every 0.2 s.
  One worker holds every completion without answering while its /health stays green. Two
  requests go out (one per worker); reported: when the stuck worker left rotation, when the
  request it held was answered (retried on the other worker), and when its replacement was
  ready.
Standard library only.

Usage: fairness_bench.py --llama-pool BIN --fake-worker BIN --llama-server BIN --model GGUF
       [--rounds N]
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
import threading
import time

FLOOD = 16
# Long enough that the flood is still queued when B arrives, even on an idle machine (the
# demo model makes about 700 tokens/s on 2 cores).
N_PREDICT = 128


def log(msg):
    print(f"fairness-bench: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, body=None, key=None, timeout=600):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Content-Type": "application/json", "Host": "127.0.0.1"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    conn.request(method, path, json.dumps(body) if body is not None else None, headers)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def status(port):
    return json.loads(request(port, "GET", "/pool/status")[1])


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"timed out waiting for {what}")


def start_pool(binary, args):
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--log-level", "warn", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, port


def stop_pool(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def timed_completion(port, key, out):
    started = time.monotonic()
    code, data = request(port, "POST", "/completion",
                         {"prompt": "Once upon a time", "n_predict": N_PREDICT,
                          "ignore_eos": True, "cache_prompt": False}, key=key)
    if code != 200:
        raise RuntimeError(f"status {code}: {data[:200]!r}")
    out.append(time.monotonic() - started)


def flood_round(port, b_key):
    flood, small = [], []
    threads = [threading.Thread(target=timed_completion, args=(port, "key-a", flood))
               for _ in range(FLOOD)]
    for t in threads:
        t.start()
    # Waiting for all 15 to queue raced the worker on an idle machine: the first ones were
    # done before the poll saw them. Queued at all is the condition; B comes 0.3 s later.
    wait_for(lambda: status(port)["totals"]["queued"] >= 1, 60, "the flood to queue")
    time.sleep(0.3)
    b = threading.Thread(target=timed_completion, args=(port, b_key, small))
    b.start()
    b.join()
    for t in threads:
        t.join()
    return small[0], max(flood)


def bench_flood(args):
    proc, port = start_pool(args.llama_pool, [
        "--llama-server", args.llama_server, "--model", args.model, "--workers", "1",
        "--parallel", "1", "--ctx-size", "2048", "--api-key", "key-a", "--api-key", "key-b"])
    try:
        wait_for(lambda: status(port)["totals"]["ready"] == 1, 300, "the worker")
        alone = []
        for _ in range(args.rounds):
            timed_completion(port, "key-b", alone)
        fair, fifo, floods = [], [], []
        for _ in range(args.rounds):
            b, whole = flood_round(port, "key-b")
            fair.append(b)
            floods.append(whole)
            b, whole = flood_round(port, "key-a")
            fifo.append(b)
            floods.append(whole)
    finally:
        stop_pool(proc)

    def row(name, values):
        return f"| {name} | {statistics.median(values):.2f} s | {max(values):.2f} s |"
    return "\n".join([
        f"| B's request ({args.rounds} rounds, {N_PREDICT} tokens, 1 worker, 1 slot) "
        "| median | max |",
        "| --- | --- | --- |",
        row("alone, idle pool", alone),
        row(f"behind A's {FLOOD}, own key (fair queue)", fair),
        row(f"behind A's {FLOOD}, A's key (one tenant: FIFO)", fifo),
        row(f"A's flood, all {FLOOD} done", floods),
    ]) + "\n"


def bench_stall(args, tmp):
    faults = os.path.join(tmp, "faults")
    open(faults, "w").close()
    proc, port = start_pool(args.llama_pool, [
        "--llama-server", args.fake_worker, "--model", args.model, "--workers", "2",
        "--parallel", "1", "--stall-timeout", "2", "--health-interval", "0.2",
        "--stop-grace", "2", "--worker-arg", "--fault-file", "--worker-arg", faults])
    rows = []
    try:
        wait_for(lambda: status(port)["totals"]["ready"] == 2, 60, "the workers")
        stuck = status(port)["workers"][0]
        with open(faults, "w") as f:
            f.write(f"{stuck['port']} hold\n")
        started = time.monotonic()
        done = []
        threads = [threading.Thread(target=timed_completion, args=(port, None, done))
                   for _ in range(2)]
        for t in threads:
            t.start()
        wait_for(lambda: status(port)["workers"][0]["state"] != "ready", 60, "the stall")
        out = time.monotonic() - started
        wait_for(lambda: status(port)["workers"][0]["state"] == "ready"
                 and status(port)["workers"][0]["port"] != stuck["port"], 60, "the replacement")
        replaced = time.monotonic() - started
        for t in threads:
            t.join()
        rows = [("stuck worker out of rotation", out),
                ("its request answered (retried elsewhere)", max(done)),
                ("replacement ready", replaced)]
    finally:
        stop_pool(proc)
    lines = ["| stall (stall_timeout 2 s, probes every 0.2 s, fake workers) "
             "| seconds after the requests were sent |", "| --- | --- |"]
    lines += [f"| {name} | {value:.2f} s |" for name, value in rows]
    return "\n".join(lines) + "\n"


def run(args):
    tmp = tempfile.mkdtemp(prefix="llama-pool-fairness-bench-")
    try:
        return bench_flood(args) + "\n" + bench_stall(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--llama-pool", required=True)
    parser.add_argument("--fake-worker", required=True)
    parser.add_argument("--llama-server", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    print(run(parser.parse_args()))


if __name__ == "__main__":
    main()
