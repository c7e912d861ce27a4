#!/usr/bin/env python3
"""Chaos run of llama-pool (make chaos; a short version runs in make test).

A pool with two REAL llama-server workers (the demo model) and one fake upstream
(fake-llama-server, --upstream) serves a steady mixed load: several client threads, each
sending non-stream and stream requests to /completion and /v1/chat/completions, some on
keep-alive connections and some with Connection: close. Faults are injected in turn, one
phase each:

  baseline         no fault
  kill9            kill -9 of a worker
  sigstop          SIGSTOP of a worker for --stop-seconds, then SIGCONT
  fake_500         the fake upstream answers every completion with a 500
  fake_stall       the fake upstream stalls its streams after 2 events
  fake_stall_start the fake upstream stalls its streams before their first event
  fake_garbage     the fake upstream answers with an invalid status line
  fake_truncate    the fake upstream cuts its replies off inside the JSON
  rolling_restart  POST /pool/restart
  sighup           the config file changes (worker arguments) and the pool gets SIGHUP
  recovery         no fault

Every response is checked byte by byte (harness.classify_plain, classify_stream). The run
fails when any request was lost (anything but a 200 with a whole JSON body or the pool's
own admission 503 for a non-stream request; anything but a stream that completed or was
cut cleanly after its first event for a stream), when a llama-server the pool started is
still alive after it stopped, or when the pool's memory or descriptors grew past the bound.
Standard library only.
"""
import argparse
import collections
import json
import os
import re
import shutil
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

PHASES = ["baseline", "kill9", "sigstop", "fake_500", "fake_stall", "fake_stall_start",
          "fake_garbage", "fake_truncate", "rolling_restart", "sighup", "recovery"]
FAULTS = {"fake_500": "fail 500", "fake_stall": "stall 2", "fake_stall_start": "stall 0",
          "fake_garbage": "garbage", "fake_truncate": "truncate"}

# Seconds per phase: the full run and the short one `make test` runs.
DURATIONS = {
    "full": dict(baseline=20, kill9=30, sigstop=35, fake_500=25, fake_stall=30,
                 fake_stall_start=25, fake_garbage=25, fake_truncate=25, rolling_restart=40,
                 sighup=40, recovery=20),
    "short": dict(baseline=3, kill9=8, sigstop=9, fake_500=5, fake_stall=7,
                  fake_stall_start=7, fake_garbage=5, fake_truncate=5, rolling_restart=10,
                  sighup=10, recovery=3),
}


def say(msg):
    harness.log("chaos", msg)


def pool_flags(server, model, config_path, fake_url, workers, ejection):
    # Timeouts short enough that a stalled worker costs seconds, not the defaults' minutes:
    # these are the knobs that bound what a hung worker can do to a request.
    return ["--config", config_path, "--workers", str(workers), "--llama-server", server,
            "--model", model, "--threads", "1", "--ctx-size", "2048", "--parallel", "2",
            "--health-interval", "1", "--health-timeout", "2", "--health-failures", "3",
            "--restart-backoff-base", "0.2", "--restart-backoff-cap", "2", "--stop-grace", "3",
            "--breaker-ejection", str(ejection), "--breaker-max-ejection", str(2 * ejection),
            "--response-timeout", "15", "--stream-idle-timeout", "5", "--queue-timeout", "30",
            "--upstream", fake_url]


def write_config(path, seed):
    with open(path, "w") as f:
        json.dump({"workers": {"args": ["--seed", str(seed)]}}, f)


def metric_lines(pool, prefixes):
    r = pool.get("/metrics")
    out = []
    for line in r.body.decode("utf-8", "replace").splitlines():
        if line.startswith(prefixes):
            out.append(line)
    return out


def wait_until(cond, timeout, step=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return False


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--build", default=os.path.join(harness.ROOT, "build"))
    ap.add_argument("--short", action="store_true", help="the short run (make test)")
    ap.add_argument("--scale", type=float, default=float(os.environ.get("CHAOS_SCALE", "1")),
                    help="multiplies every phase's duration (env CHAOS_SCALE)")
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--stop-seconds", type=float, default=None,
                    help="how long the sigstop phase keeps a worker stopped (20; short: 5)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the logs directory")
    args = ap.parse_args()
    mode = "short" if args.short else "full"
    durations = {k: v * args.scale for k, v in DURATIONS[mode].items()}
    stop_seconds = args.stop_seconds or (5 if args.short else 20)

    server = harness.toolchain("server-path")
    model = harness.toolchain("model-path")
    tmp = harness.make_tmp("llama-pool-chaos-")
    procs = harness.Processes(tmp)
    config_path = os.path.join(tmp, "pool.json")
    write_config(config_path, 1)
    failures = []
    try:
        fake = harness.Fake(procs, args.build, tmp, "fake",
                            ["--parallel", "2", "--tokens-per-second", "200"])
        pool = harness.Pool(procs, args.build,
                            pool_flags(server, model, config_path, fake.url(), args.workers,
                                       ejection=2 if args.short else 5))
        say(f"pool on :{pool.port} (pid {pool.pid}), {args.workers} real workers, fake upstream "
            f":{fake.port}; logs in {tmp}")
        if not pool.wait_ready(args.workers + 1, 180):
            raise RuntimeError("the pool did not get ready:\n" + pool.log_text()[-3000:])

        phase = ["baseline"]
        tally = harness.Tally()
        stop = threading.Event()
        clients = [harness.LoadClient(pool.port, lambda: phase[0], tally.record, stop, seed=i,
                                      kinds=["plain", "plain_stream", "chat", "chat_stream"],
                                      keep_alive=(i % 2 == 0), timeout=120)
                   for i in range(args.clients)]
        sampler = harness.Sampler(pool, lambda: phase[0], interval=0.5)
        sampler.start()
        for c in clients:
            c.start()

        def upstream_in_rotation():
            # Available and its breaker closed again after the fault phase before.
            for w in pool.status().get("workers", []):
                if not w.get("managed") and w.get("available") and w.get("breaker") == "closed":
                    return True
            return False

        def upstream_attempts():
            counts = collections.Counter()
            for line in metric_lines(pool, ("llama_pool_upstream_requests_total{worker=\"u0\"",)):
                m = re.match(r'.*outcome="([^"]+)"\} (\d+)', line)
                if m:
                    counts[m.group(1)] = int(m.group(2))
            return counts

        notes = {}
        fake_attempts = {}
        attempts_before = upstream_attempts()
        for name in PHASES:
            if name.startswith("fake_"):
                # Between phases: load goes on, counted apart as "settle".
                phase[0] = "settle"
                if not wait_until(upstream_in_rotation, 30):
                    notes[name] = "the fake upstream was not back in rotation when the phase began"
                delta = upstream_attempts()
                settle = collections.Counter(delta)
                settle.subtract(attempts_before)
                for k, v in settle.items():
                    if v > 0:
                        fake_attempts.setdefault("settle", collections.Counter())[k] += v
                attempts_before = delta
            phase[0] = name
            started = time.monotonic()
            end = started + durations[name]
            say(f"phase {name} ({durations[name]:.0f} s)")
            if name == "kill9":
                time.sleep(min(2, durations[name] / 4))
                victim = pool.managed_pids()[0]
                os.kill(victim, signal.SIGKILL)
                notes[name] = f"killed worker pid {victim}"
            elif name == "sigstop":
                time.sleep(min(2, durations[name] / 4))
                victim = pool.managed_pids()[0]
                os.kill(victim, signal.SIGSTOP)
                time.sleep(stop_seconds)
                replaced = not harness.proc_alive(victim)
                if not replaced:
                    os.kill(victim, signal.SIGCONT)
                notes[name] = (f"stopped worker pid {victim} for {stop_seconds:.0f} s; " +
                               ("the pool had replaced it" if replaced
                                else "it was resumed"))
            elif name.startswith("fake_"):
                fault = FAULTS[name]
                fake.set_fault(fault)
                notes[name] = f"fake upstream: {fault}"
            elif name == "rolling_restart":
                before = set(pool.managed_pids())
                r = harness.http(pool.port, "POST", "/pool/restart", b"")
                done = wait_until(lambda: pool.ready_count() >= args.workers + 1 and
                                  not (set(pool.managed_pids()) & before), durations[name] + 60)
                notes[name] = f"POST /pool/restart: {r.status}; rolled {'in time' if done else 'LATE'}"
                if not done:
                    failures.append("the rolling restart did not complete")
            elif name == "sighup":
                before = set(pool.managed_pids())
                write_config(config_path, 2)
                os.kill(pool.pid, signal.SIGHUP)
                done = wait_until(lambda: pool.ready_count() >= args.workers + 1 and
                                  not (set(pool.managed_pids()) & before), durations[name] + 60)
                notes[name] = f"SIGHUP with new worker args; rolled {'in time' if done else 'LATE'}"
                if not done:
                    failures.append("the SIGHUP reload did not roll the workers")
            time.sleep(max(0.0, end - time.monotonic()))
            if name.startswith("fake_"):
                fake.set_fault(None)
            now_attempts = upstream_attempts()
            delta = collections.Counter(now_attempts)
            delta.subtract(attempts_before)
            fake_attempts[name] = {k: v for k, v in delta.items() if v > 0}
            attempts_before = now_attempts

        phase[0] = "drain"
        stop.set()
        for c in clients:
            c.join(150)
        if any(c.is_alive() for c in clients):
            failures.append("a client is still waiting for its response (hang)")
        sampler.stop_event.set()
        sampler.join()
        workers_ready = wait_until(lambda: pool.ready_count() >= args.workers, 60)
        if not workers_ready:
            failures.append("the pool did not get its workers ready again after the chaos")
        metrics = metric_lines(pool, ("llama_pool_retries_total", "llama_pool_rejected_total",
                                      "llama_pool_upstream_requests_total",
                                      "llama_pool_worker_restarts_total"))

        # Stop the pool, then look for any llama-server it ever started.
        pool.note_children()
        os.kill(pool.pid, signal.SIGTERM)
        try:
            code = pool.proc.wait(60)
        except Exception:
            code = None
            failures.append("the pool did not exit within 60 s of SIGTERM")
        time.sleep(0.5)
        children = sorted(pool.children_seen)
        orphans = [p for p in children if harness.proc_alive(p)]
        if orphans:
            failures.append("processes the pool started are still alive: " + ", ".join(
                f"{p} ({harness.proc_cmdline(p)[:80]})" for p in orphans))
        if code != 0:
            failures.append(f"the pool exited with {code} on SIGTERM")

        # Memory and descriptors: the last phase against the first.
        def phase_max(name, idx):
            vals = [s[idx] for s in sampler.samples if s[1] == name]
            return max(vals) if vals else 0
        res_rows = []
        for name in PHASES:
            res_rows.append((name, phase_max(name, 2), phase_max(name, 3), phase_max(name, 4),
                             phase_max(name, 5)))
        base_rss, base_fds = phase_max("baseline", 2), phase_max("baseline", 3)
        end_rss, end_fds = phase_max("recovery", 2), phase_max("recovery", 3)
        if base_rss and end_rss > 1.5 * base_rss + 32 * 1024:
            failures.append(f"pool RSS grew from {base_rss} KiB to {end_rss} KiB")
        if base_fds and end_fds > base_fds + 64:
            failures.append(f"pool descriptors grew from {base_fds} to {end_fds}")

        lost = tally.lost()
        if lost:
            failures.append(f"{lost} requests lost")
            for outcome, examples in tally.examples.items():
                for e in examples:
                    say(f"  {outcome}: {e}")

        print(f"\n## chaos ({mode}, {args.clients} clients, {args.workers} real workers + 1 fake "
              f"upstream)\n")
        shown = PHASES + (["settle"] if "settle" in tally.counts else [])
        print(tally.table(shown))
        print("\nper phase: pool max RSS (KiB), descriptors, threads, child processes\n")
        print("| phase | rss_kib | fds | threads | children |\n|---|---|---|---|---|")
        for row in res_rows:
            print("| " + " | ".join(str(c) for c in row) + " |")
        print("\nwhat each phase did (and the pool's attempts on the fake upstream, by outcome):")
        for name in shown:
            seen = ", ".join(f"{k} {v}" for k, v in sorted(fake_attempts.get(name, {}).items()))
            what = notes.get(name, "load goes on between phases, until the fake upstream is back"
                             if name == "settle" else "no fault")
            print(f"- {name}: {what}; fake upstream attempts: {seen or 'none'}")
        print(f"\nworker processes started by the pool: {len(children)}; alive after it exited: "
              f"{len(orphans)}")
        print("\npool counters at the end:")
        for line in metrics:
            if not line.startswith("#") and not line.endswith(" 0"):
                print(f"    {line}")
        record = {"mode": mode, "counts": tally.counts, "resources": res_rows, "notes": notes,
                  "fake_attempts": fake_attempts, "children": len(children), "orphans": orphans,
                  "failures": failures, "metrics": metrics}
        return harness.conclude("chaos", args, tmp, record, failures,
                                "every request ended in an expected outcome; no orphan; "
                                "bounded resources")
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
