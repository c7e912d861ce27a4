#!/usr/bin/env python3
"""Work that survives (issue 23): embedding batches over replicas, and resumed jobs.

On real llama-server workers with the demo model:
- embeddings: one POST /v1/embeddings with 256 inputs, to a pool of one embedding worker
  (the list goes to it whole) and to a pool of two (the list is split between them), each
  repeated and reported as median and max;
- resume: a summary job is run once to the end (its full time), then again with the pool
  SIGKILLed once half its first-level chunks are done; the time the restarted pool needs
  to finish it (reusing the saved chunks) is compared with the full time, which is what
  submitting it again from nothing would cost.
Standard library only.

Usage: work_bench.py --llama-pool BIN --llama-server BIN --model GGUF [--rounds N]
[--chars N] [--inputs N]
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
    print(f"work-bench: {msg}", file=sys.stderr, flush=True)


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


def start_pool(args, workers, extra=(), worker_args=(), data_dir=None, ready=True):
    port = free_port()
    cmd = [args.llama_pool, "--port", str(port), "--workers", str(workers),
           "--llama-server", args.llama_server, "--model", args.model,
           "--ctx-size", "2048", "--parallel", "2", "--log-level", "warn",
           "--data-dir", data_dir or ""]
    for a in worker_args:
        cmd += ["--worker-arg", a]
    cmd += list(extra)
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            status, body = request(port, "GET", "/pool/status", timeout=5)
            if status == 200 and (not ready or json.loads(body)["totals"]["ready"] == workers):
                return p, port
        except OSError:
            pass
        if p.poll() is not None:
            raise RuntimeError(f"llama-pool exited with {p.returncode}")
        time.sleep(0.1)
    raise RuntimeError("llama-pool did not become ready")


def stop_pool(p, sig=signal.SIGTERM):
    try:
        os.killpg(p.pid, sig)
        p.wait(60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def embed_inputs(n):
    words = ("harbor quantum violin glacier tax pancake satellite zebra mortgage volcano "
             "poetry kernel saffron tundra cricket ballet protein cobalt lantern").split()
    return [" ".join(words[(i * 7 + k) % len(words)] for k in range(4 + i % 9)) + f" {i}"
            for i in range(n)]


def bench_embeddings(args):
    inputs = embed_inputs(args.inputs)
    rows = []
    for workers in (1, 2):
        p, port = start_pool(args, workers,
                             worker_args=("--embeddings", "--pooling", "mean"))
        try:
            request(port, "POST", "/v1/embeddings", {"input": inputs[:8]})  # warm
            times = []
            for _ in range(args.rounds):
                started = time.monotonic()
                status, data = request(port, "POST", "/v1/embeddings", {"input": inputs})
                times.append(time.monotonic() - started)
                if status != 200 or len(json.loads(data)["data"]) != len(inputs):
                    raise RuntimeError(f"embeddings: {status} {data[:200]!r}")
            rows.append((workers, statistics.median(times), max(times)))
            log(f"embeddings on {workers} worker(s): {times}")
        finally:
            stop_pool(p)
    base = rows[0][1]
    lines = [f"| {args.inputs}-input /v1/embeddings ({args.rounds} rounds) | median | max | "
             "vs 1 worker |",
             "| --- | --- | --- | --- |"]
    for workers, median, most in rows:
        how = "whole, one worker" if workers == 1 else "split over 2 workers"
        lines.append(f"| {workers} worker{'s' if workers > 1 else ''} ({how}) | "
                     f"{median:.2f} s | {most:.2f} s | {base / median:.2f}x |")
    return "\n".join(lines) + "\n"


def document(chars):
    words = ("the council river storm report budget school road repair water plan meeting "
             "town county bridge rain flood team result survey month year people office").split()
    out, i = [], 0
    while sum(len(s) for s in out) < chars:
        n = 8 + i % 15
        s = " ".join(words[(i * 5 + k) % len(words)] for k in range(n))
        out.append(s[0].upper() + s[1:] + ". ")
        i += 1
    return "".join(out)[:chars]


def job_body(chars):
    return {"type": "summarize", "text": document(chars), "max_chunk_chars": 1000,
            "overlap": 0, "levels": 2, "n_predict": 48, "temperature": 0, "ignore_eos": True}


def job(port, job_id):
    _, data = request(port, "GET", f"/v1/jobs/{job_id}", timeout=10)
    return json.loads(data)


def wait_job(port, job_id, timeout=1800):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        j = job(port, job_id)
        if j["state"] not in ("queued", "running"):
            return j
        time.sleep(0.1)
    raise RuntimeError("job did not finish")


def bench_resume(args):
    tmp = tempfile.mkdtemp(prefix="llama-pool-work-bench-")
    body = job_body(args.chars)
    try:
        # The full run, for reference.
        p, port = start_pool(args, 1, data_dir=os.path.join(tmp, "full"))
        try:
            started = time.monotonic()
            _, data = request(port, "POST", "/v1/jobs", body)
            done = wait_job(port, json.loads(data)["id"])
            full = time.monotonic() - started
            if done["state"] != "succeeded":
                raise RuntimeError(f"job: {done}")
            chunks = done["progress"]["levels"][0]["total"]
        finally:
            stop_pool(p)
        # Cut short at half the first level, then resumed by the next start.
        data_dir = os.path.join(tmp, "cut")
        p, port = start_pool(args, 1, data_dir=data_dir)
        try:
            started = time.monotonic()
            _, data = request(port, "POST", "/v1/jobs", body)
            job_id = json.loads(data)["id"]
            while True:
                levels = job(port, job_id)["progress"]["levels"]
                if levels and levels[0]["done"] >= levels[0]["total"] // 2:
                    break
                time.sleep(0.05)
            before = time.monotonic() - started
        finally:
            stop_pool(p, signal.SIGKILL)
        restarted = time.monotonic()
        p, port = start_pool(args, 1, data_dir=data_dir, ready=False)
        try:
            done = wait_job(port, job_id)
            after = time.monotonic() - restarted
            if done["state"] != "succeeded":
                raise RuntimeError(f"resumed job: {done}")
            # A tiny smoke document may have finished before the kill: nothing resumed then.
            reused = done.get("resumed", {}).get("reused_chunks", 0)
        finally:
            stop_pool(p)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"resume: full {full:.1f} s, before kill {before:.1f} s, after restart {after:.1f} s")
    lines = [f"| summary job, {args.chars:,} characters, {chunks} first-level chunks, 1 worker "
             "| time |",
             "| --- | --- |",
             f"| run to the end without a stop | {full:.1f} s |",
             f"| SIGKILLed after {before:.1f} s, restarted: start to finish, "
             f"{reused} chunk summaries reused | {after:.1f} s |",
             f"| saved against submitting it again from nothing after the restart | "
             f"{full - after:.1f} s |"]
    return "\n".join(lines) + "\n"


def run(args):
    return bench_embeddings(args) + "\n" + bench_resume(args)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--llama-pool", required=True)
    parser.add_argument("--llama-server", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chars", type=int, default=20000)
    parser.add_argument("--inputs", type=int, default=256)
    print(run(parser.parse_args()))


if __name__ == "__main__":
    main()
