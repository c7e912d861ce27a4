#!/usr/bin/env python3
"""Hostile-client matrix: sends each hostile input to a pool (one fake worker that logs what
it receives, --admin-key set) and prints, per input, the pool's answer and what reached the
worker. The assertions live in test/integration/hostile_clients_test.cpp and
relay_edges_test.cpp; this prints the table for docs/RELIABILITY.md. Standard library only.

    python3 scripts/chaos/hostile_matrix.py [--build build]
"""
import argparse
import json
import os
import resource
import shutil
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

BODY = b'{"prompt":"x","max_tokens":2}'


def raw(port, data, timeout=10):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(data)
            return harness.read_response(s, "POST" if data.startswith(b"POST") else "GET",
                                         timeout)
    except OSError as e:
        r = harness.Response()
        r.error = str(e)
        return r


def post(target, body=BODY, headers=b""):
    return (b"POST " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers +
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def get(target, headers=b""):
    return b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers + b"\r\n"


def answer(r):
    if r.status == 0:
        return f"no answer ({r.error})"
    err = harness.pool_error(r.body)
    who = ""
    if err:
        who = " (pool)" if err.get("source") == "llama-pool" else " (worker)"
        msg = str(err.get("message", ""))[:60]
        return f"{r.status}{who}: {msg}"
    return f"{r.status}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--build", default=os.path.join(harness.ROOT, "build"))
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = harness.make_tmp("llama-pool-hostile-")
    procs = harness.Processes(tmp)
    log = os.path.join(tmp, "requests.jsonl")
    fake = os.path.join(args.build, "fake-llama-server")
    rows = []
    try:
        pool = harness.Pool(procs, args.build, [
            "--workers", "1", "--llama-server", fake, "--model", fake, "--admin-key", "adm",
            "--max-connections", "2100", "--head-timeout", "5", "--max-body-bytes", "33554432",
            "--worker-arg", "--log-requests", "--worker-arg", log])
        deadline = time.monotonic() + 20
        while harness.http(pool.port, "GET", "/health").status != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("pool not ready")
            time.sleep(0.2)

        def seen():
            out = []
            if os.path.exists(log):
                with open(log) as f:
                    for line in f:
                        e = json.loads(line)
                        if any(h[0].lower() == "x-forwarded-for" for h in e["headers"]):
                            out.append(e)
            return out

        def case(label, data):
            before = len(seen())
            r = raw(pool.port, data)
            time.sleep(0.05)
            new = seen()[before:]
            reached = ", ".join(
                f"{e['method']} {e['target']} ({e['body_length']} B)" for e in new) or "nothing"
            rows.append((label, answer(r), reached))
            return r

        deep = b"[" * 100000 + b"]" * 100000
        case("100k nested arrays in a JSON body", post(b"/completion",
                                                       b'{"prompt":"x","max_tokens":2,"x":' + deep + b"}"))
        case("100k unclosed arrays", post(b"/completion", b'{"prompt":"x","x":' + b"[" * 100000))
        case("all 256 byte values as the body", post(b"/completion", bytes(range(256))))
        case("invalid UTF-8 inside a JSON string",
             post(b"/completion", b'{"prompt":"\xff\xfe\xc0\xaf","max_tokens":2}'))
        for t in (b"/../pool/status", b"/%2e%2e/pool/status", b"/%70ool/status", b"//pool/status",
                  b"/v1/../pool/status", b"/pool%2fstatus", b"/..%2f..%2fpool/status",
                  b"/%00", b"/completion%00", b"/completion%0d%0aX-Injected:%201"):
            case(f"GET {t.decode()}", get(t))
        case("POST /completion/../pool/restart", post(b"/completion/../pool/restart", b""))
        case("POST /v1/../completion", post(b"/v1/../completion"))
        case("POST /%63ompletion", post(b"/%63ompletion"))
        for label, value in (("10,000 characters", b"a" * 10000), ("non-ASCII (UTF-8)", b"caf\xc3\xa9"),
                             ("bytes 0xff 0xfe", b"\xff\xfe"), ("a bare CR inside", b"a\rX-Injected: 1"),
                             ("percent-encoded CRLF", b"a%0d%0aX-Injected:%201"),
                             ("safe: ok-id_1.2:3", b"ok-id_1.2:3")):
            r = case(f"X-Request-Id: {label}", post(b"/completion", BODY, b"X-Request-Id: " + value + b"\r\n"))
            rows[-1] = (rows[-1][0], rows[-1][1] + f"; echoed id {r.header('X-Request-Id') or '-'}"[:80],
                        rows[-1][2] + ("; worker got X-Request-Id " + next(
                            (h[1] for h in seen()[-1]["headers"] if h[0].lower() == "x-request-id"),
                            "-") if rows[-1][2] != "nothing" else ""))
        # HTTP edges (asserted in relay_edges_test.cpp).
        case("Content-Length and Transfer-Encoding together",
             post(b"/completion", b"0\r\n\r\n", b"Transfer-Encoding: chunked\r\n"))
        case("two different Content-Lengths",
             b"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
             b"Content-Length: 3\r\n\r\n{}x")
        case("obsolete line folding", post(b"/completion", BODY, b"X-A: 1\r\n folded\r\n"))
        case("a 20 KiB header (limit 16 KiB)", post(b"/completion", BODY,
                                                    b"X-Big: " + b"b" * 20000 + b"\r\n"))
        case("Content-Length: 40000000 (limit 32 MiB)",
             b"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Length: 40000000\r\n\r\n")
        case("HTTP/2.0 request line", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n")
        # RFC 9112 §3.2 and §3.2.2 (asserted in http_conformance_test.cpp).
        case("HTTP/1.1 without Host", b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n")
        case("HTTP/1.1 with two Host lines",
             b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n")
        case("HTTP/1.0 without Host", b"GET /health HTTP/1.0\r\n\r\n")
        case("absolute-form target", post(b"http://elsewhere.example/completion"))
        case("Transfer-Encoding in HTTP/1.0",
             b"POST /completion HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        case("Expect: something-else", post(b"/completion", BODY, b"Expect: nothing\r\n"))
        case("head never finished (slowloris; head timeout 5 s)",
             b"POST /completion HTTP/1.1\r\nHost: x\r\n")
        # 2,000 idle connections, then a request.
        idle = [socket.create_connection(("127.0.0.1", pool.port)) for _ in range(2000)]
        time.sleep(1)
        case("a request while 2,000 idle connections are held (max-connections 2100)",
             post(b"/completion"))
        extra = [socket.create_connection(("127.0.0.1", pool.port)) for _ in range(100)]
        time.sleep(1)
        case("a request while 2,100 connections are held (max-connections 2100)",
             post(b"/completion"))
        for s in idle + extra:
            s.close()
        procs.stop(pool.proc)
        # Out of descriptors: a pool whose limit is 96.
        orig = harness.subprocess.Popen

        def limited(*a, **k):
            k["preexec_fn"] = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (96, 96))
            return orig(*a, **k)
        harness.subprocess.Popen = limited
        try:
            small = harness.Pool(procs, args.build, [
                "--workers", "1", "--llama-server", fake, "--model", fake, "--head-timeout", "60"],
                name="pool-96-fds")
        finally:
            harness.subprocess.Popen = orig
        deadline = time.monotonic() + 20
        while harness.http(small.port, "GET", "/health").status != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("small pool not ready")
            time.sleep(0.2)
        pool = small
        idle = [socket.create_connection(("127.0.0.1", pool.port)) for _ in range(120)]
        time.sleep(1)
        case("a request while 120 idle connections are held by a pool limited to 96 descriptors",
             post(b"/completion"))
        for s in idle:
            s.close()
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    print("| input | pool's answer | what reached the worker |")
    print("|---|---|---|")
    for label, ans, reached in rows:
        print(f"| {label} | {ans} | {reached} |".replace("\r", "\\r"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
