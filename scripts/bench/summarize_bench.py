#!/usr/bin/env python3
"""Summarization benchmark (issue 8): the n8n node's sequential loop vs POST /v1/summarize.

A 50,000-character document is summarized twice on the same pool of real llama-server
workers, once as the node does it today (its sentence regex, 2,048-character chunks with a
20-word overlap, max_tokens = floor(len * 0.3 / 4), one request at a time, up to 3 levels)
and once with one POST /v1/summarize (parallel over every free slot). Both run with
ignore_eos so every completion produces exactly its token budget: the work is the same,
only the scheduling differs. Run on 1 and on 2 workers; prints a markdown table.

Standard library only. Usage: summarize_bench.py --llama-pool BIN --llama-server BIN
--model GGUF [--chars 50000] [--smoke]
"""
import argparse
import http.client
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time


def log(msg):
    print(f"summarize-bench: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, path, body, timeout=3600):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json",
                                                  "Connection": "close"})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def document(chars, seed=7):
    """Plain English-like prose with varied sentence lengths; deterministic."""
    import random
    rnd = random.Random(seed)
    words = ("the council river storm report budget school road repair water plan meeting "
             "town county bridge rain flood team result survey month year people office "
             "record data cost north south east west market station").split()
    out = []
    size = 0
    while size < chars:
        n = rnd.randint(6, 28)
        s = " ".join(rnd.choice(words) for _ in range(n))
        s = s[0].upper() + s[1:] + rnd.choice([".", ".", ".", "!", "?"]) + " "
        out.append(s)
        size += len(s)
    return "".join(out)[:chars]


def node_chunks(text, chunk_chars=2048, overlap_words=20):
    """The node's chunking, reproduced: sentences by [^.!?]+[.!?]+ (text after the last
    punctuation is dropped, as the node does), packed to chunk_chars, 20-word overlap."""
    sentences = re.findall(r"[^.!?]+[.!?]+", text)
    chunks, current = [], ""
    for s in sentences:
        if current and len(current) + len(s) > chunk_chars:
            chunks.append(current.strip())
            tail = " ".join(current.split()[-overlap_words:])
            current = tail + " " + s
        else:
            current += s
    if current.strip():
        chunks.append(current.strip())
    return chunks


def node_loop(port, text, sampling, levels=3, threshold=12000):
    """One request at a time, level by level, as the node's recursive summary does."""
    requests = 0
    for level in range(levels):
        if len(text) <= threshold and level > 0:
            break
        chunks = node_chunks(text)
        summaries = []
        for c in chunks:
            body = dict(sampling)
            body["prompt"] = f"Summarize the following text:\n\n{c}\n\nSummary:"
            body["max_tokens"] = max(1, math.floor(len(c) * 0.3 / 4))
            status, data = post(port, "/completion", body)
            requests += 1
            if status != 200:
                raise RuntimeError(f"node loop: {status} {data[:200]!r}")
            summaries.append(json.loads(data)["content"].strip())
        text = "\n\n".join(summaries)
        if len(chunks) == 1:
            break
    return requests


def start_pool(args, workers):
    port = free_port()
    data = tempfile.mkdtemp(prefix="llama-pool-sumbench-")
    cmd = [args.llama_pool, "--port", str(port), "--workers", str(workers),
           "--llama-server", args.llama_server, "--model", args.model,
           "--data-dir", data, "--log-level", "warn"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            status, body = get(port, "/pool/status")
            if status == 200 and json.loads(body)["totals"]["ready"] == workers:
                return p, port
        except OSError:
            pass
        if p.poll() is not None:
            raise RuntimeError(f"llama-pool exited with {p.returncode}")
        time.sleep(0.2)
    raise RuntimeError("llama-pool did not become ready")


def stop_pool(p):
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def run(args):
    text = document(args.chars)
    sampling = {"temperature": 0, "ignore_eos": True}
    rows = []
    for workers in (1, 2):
        pool, port = start_pool(args, workers)
        try:
            t0 = time.time()
            node_requests = node_loop(port, text, sampling)
            node_s = time.time() - t0
            body = dict(sampling)
            body["text"] = text
            t0 = time.time()
            status, data = post(port, "/v1/summarize", body)
            ours_s = time.time() - t0
            if status != 200:
                raise RuntimeError(f"/v1/summarize: {status} {data[:300]!r}")
            reply = json.loads(data)
            levels = " + ".join(str(l["chunks"]) for l in reply["levels"])
            # The node stops once its joined summaries are under 12,000 characters (here after
            # one level), so the like-for-like comparison is /v1/summarize limited to that
            # first level: the same chunks and budgets, only run in parallel.
            body["levels"] = 1
            t0 = time.time()
            status, data = post(port, "/v1/summarize", body)
            map_s = time.time() - t0
            if status != 200:
                raise RuntimeError(f"/v1/summarize levels=1: {status} {data[:300]!r}")
            map_n = json.loads(data)["completions"]
            rows.append((workers, node_s, node_requests, map_s, map_n, ours_s,
                         reply["completions"], levels))
            log(f"{workers} worker(s): node loop {node_s:.1f} s ({node_requests} requests), "
                f"/v1/summarize first level only {map_s:.1f} s ({map_n} completions), "
                f"to one chunk {ours_s:.1f} s ({reply['completions']} completions, "
                f"chunks per level {levels})")
        finally:
            stop_pool(pool)
    out = ["| workers | node's sequential loop s (requests) | /v1/summarize, first level only s "
           "(completions) | speedup, same work | /v1/summarize to one chunk s (chunks per level) |",
           "|---:|---:|---:|---:|---:|"]
    for workers, node_s, node_n, map_s, map_n, ours_s, ours_n, levels in rows:
        out.append(f"| {workers} | {node_s:.1f} ({node_n}) | {map_s:.1f} ({map_n}) | "
                   f"{node_s / map_s:.2f} | {ours_s:.1f} ({levels}) |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llama-pool", required=True)
    ap.add_argument("--llama-server", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--chars", type=int, default=50000)
    ap.add_argument("--smoke", action="store_true", help="a 3,000-character document")
    args = ap.parse_args()
    if args.smoke:
        args.chars = 3000
    print(run(args))


if __name__ == "__main__":
    main()
