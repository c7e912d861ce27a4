#!/usr/bin/env python3
"""Soak run of llama-pool (make soak; SOAK_SECONDS, 600 by default).

The chaos run's set-up (two REAL llama-server workers on the demo model, one fake upstream,
client threads sending non-stream and stream requests to /completion and the chat route)
for a long time, with periodic faults: every --fault-every seconds, in turn, kill -9 of a
worker, or the fake upstream answering 500s for a while. The pool's RSS, open descriptors,
threads and children are sampled from /proc every --sample-every seconds.

Growth rule: after the warm-up (the first 10% of the run, at least 30 s), the samples are
cut into three equal spans of time; for RSS, descriptors and threads, the largest value of
the last third must not exceed the largest of the first third x 1.2 plus a small slack
(RSS 4 MiB, descriptors 8, threads 8). A leak of one descriptor, thread or a few KiB per
request grows without bound and breaks the rule; the load's own ups and downs (connections
opening and closing, a worker restarting) stay within it. Every request must also end in an
expected outcome, as in the chaos run. Standard library only.
"""
import argparse
import os
import shutil
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chaos  # noqa: E402
import harness  # noqa: E402

SLACK = {"rss_kib": 4096, "fds": 8, "threads": 8}


def say(msg):
    harness.log("soak", msg)


def growth_check(samples, warmup):
    """(rows, failures): for each resource, first-third max, last-third max and the bound."""
    kept = [s for s in samples if s[0] >= warmup]
    if len(kept) < 6:
        return [], ["too few samples after the warm-up to judge growth"]
    start, end = kept[0][0], kept[-1][0]
    third = (end - start) / 3
    first = [s for s in kept if s[0] <= start + third]
    last = [s for s in kept if s[0] >= end - third]
    rows, failures = [], []
    for name, idx in (("rss_kib", 2), ("fds", 3), ("threads", 4)):
        a = max(s[idx] for s in first)
        b = max(s[idx] for s in last)
        bound = a * 1.2 + SLACK[name]
        ok = b <= bound
        rows.append((name, a, b, round(bound), "ok" if ok else "GREW"))
        if not ok:
            failures.append(f"{name} grew: first third max {a}, last third max {b} > {bound:.0f}")
    return rows, failures


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--build", default=os.path.join(harness.ROOT, "build"))
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", "600")))
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--fault-every", type=float, default=60)
    ap.add_argument("--sample-every", type=float, default=5)
    ap.add_argument("--row-every", type=float, default=60, help="seconds per row of the table")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the logs directory")
    args = ap.parse_args()

    server = harness.toolchain("server-path")
    model = harness.toolchain("model-path")
    tmp = harness.make_tmp("llama-pool-soak-")
    procs = harness.Processes(tmp)
    config_path = os.path.join(tmp, "pool.json")
    chaos.write_config(config_path, 1)
    failures = []
    try:
        fake = harness.Fake(procs, args.build, tmp, "fake",
                            ["--parallel", "2", "--tokens-per-second", "200"])
        pool = harness.Pool(procs, args.build,
                            chaos.pool_flags(server, model, config_path, fake.url(), args.workers,
                                             ejection=5))
        say(f"pool on :{pool.port} (pid {pool.pid}), {args.workers} real workers, fake upstream "
            f":{fake.port}, {args.seconds:.0f} s; logs in {tmp}")
        if not pool.wait_ready(args.workers + 1, 180):
            raise RuntimeError("the pool did not get ready:\n" + pool.log_text()[-3000:])

        started = time.monotonic()
        row_of = lambda: f"{int((time.monotonic() - started) // args.row_every)}"
        tally = harness.Tally()
        stop = threading.Event()
        clients = [harness.LoadClient(pool.port, row_of, tally.record, stop, seed=i,
                                      kinds=["plain", "plain_stream", "chat", "chat_stream"],
                                      keep_alive=(i % 2 == 0), timeout=120)
                   for i in range(args.clients)]
        sampler = harness.Sampler(pool, row_of, interval=args.sample_every)
        sampler.start()
        for c in clients:
            c.start()

        faults = []
        next_fault = started + args.fault_every
        fault_no = 0
        fake_clear_at = None
        while time.monotonic() - started < args.seconds:
            now = time.monotonic()
            if fake_clear_at and now >= fake_clear_at:
                fake.set_fault(None)
                fake_clear_at = None
            if now >= next_fault:
                t = round(now - started)
                if fault_no % 2 == 0:
                    pids = pool.managed_pids()
                    if pids:
                        os.kill(pids[0], signal.SIGKILL)
                        faults.append(f"{t} s: kill -9 worker pid {pids[0]}")
                else:
                    fake.set_fault("fail 500")
                    fake_clear_at = now + min(15, args.fault_every / 2)
                    faults.append(f"{t} s: fake upstream answers 500 for "
                                  f"{min(15, args.fault_every / 2):.0f} s")
                fault_no += 1
                next_fault += args.fault_every
            time.sleep(0.5)
        fake.set_fault(None)
        stop.set()
        for c in clients:
            c.join(150)
        if any(c.is_alive() for c in clients):
            failures.append("a client is still waiting for its response (hang)")
        sampler.stop_event.set()
        sampler.join()

        os.kill(pool.pid, signal.SIGTERM)
        try:
            code = pool.proc.wait(60)
        except Exception:
            code = None
        if code != 0:
            failures.append(f"the pool exited with {code} on SIGTERM")
        time.sleep(0.5)
        orphans = [p for p in sorted(pool.children_seen) if harness.proc_alive(p)]
        if orphans:
            failures.append(f"processes the pool started are still alive: {orphans}")

        warmup = max(30.0, 0.1 * args.seconds)
        growth, growth_failures = growth_check(sampler.samples, warmup)
        failures += growth_failures
        lost = tally.lost()
        if lost:
            failures.append(f"{lost} requests lost")
            for outcome, examples in tally.examples.items():
                for e in examples:
                    say(f"  {outcome}: {e}")

        print(f"\n## soak ({args.seconds:.0f} s, {args.clients} clients, {args.workers} real "
              f"workers + 1 fake upstream, a fault every {args.fault_every:.0f} s)\n")
        print(f"| time (s) | requests | expected outcomes | lost | rss_kib (max) | fds (max) | "
              f"threads (max) | children (max) |")
        print("|---|---|---|---|---|---|---|---|")
        rows = sorted({s[1] for s in sampler.samples} | set(tally.counts), key=int)
        table = []
        for row in rows:
            per = tally.counts.get(row, {})
            total = per.get("_plain", 0) + per.get("_stream", 0)
            bad = sum(n for k, n in per.items() if k.startswith("lost"))
            ss = [s for s in sampler.samples if s[1] == row]
            vals = [max(s[i] for s in ss) if ss else 0 for i in (2, 3, 4, 5)]
            label = f"{int(row) * args.row_every:.0f}-{(int(row) + 1) * args.row_every:.0f}"
            table.append([label, total, total - bad, bad, *vals])
            print("| " + " | ".join(str(c) for c in table[-1]) + " |")
        print(f"\ngrowth rule after a {warmup:.0f} s warm-up (last third max <= first third max x "
              f"1.2 + slack):\n")
        print("| resource | first third max | last third max | bound | verdict |")
        print("|---|---|---|---|---|")
        for r in growth:
            print("| " + " | ".join(str(c) for c in r) + " |")
        totals = {}
        for per in tally.counts.values():
            for k, n in per.items():
                if not k.startswith("_"):
                    totals[k] = totals.get(k, 0) + n
        print("\noutcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(totals.items())))
        print("faults: " + "; ".join(faults))
        print(f"worker processes started by the pool: {len(pool.children_seen)}; alive after it "
              f"exited: {len(orphans)}")
        record = {"seconds": args.seconds, "table": table, "growth": growth, "outcomes": totals,
                  "faults": faults, "failures": failures, "samples": sampler.samples}
        return harness.conclude("soak", args, tmp, record, failures,
                                "no growth after the warm-up, every request ended in an "
                                "expected outcome")
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
