"""Issue 18's item 5: its targets, each checked against nginx in one run (bench.py's section
targets18; `python3 scripts/bench/bench.py --only targets18` runs it alone).

  (a) 1000 concurrent SSE streams at 5 events/s (fanout_bench.py): llama-pool's CPU per
      relayed event at most nginx's, at most 32 threads, RSS at most 1.5 times nginx's;
  (b) 10,000 concurrent streams, each read to its end (fanout_bench.py): all completed, with
      the peak threads and RSS of llama-pool and nginx;
  (c) POST /tokenize on a real llama-server, 16 keep-alive connections (tokenize_bench.py):
      llama-pool's throughput at least nginx's;
  (d) the fast fake worker, 64 keep-alive connections (wrk): llama-pool's p99 at most 1.5 times
      nginx's;
  (e) the same at one connection: what llama-pool adds to the p50 over direct at most what
      nginx adds.
(d) and (e) show HAProxy too, as section 1 does. Standard library only.
"""
import statistics

import bench as B
import fanout_bench
import tokenize_bench

STREAMS_A, RATE_A = 1000, 5
WRK_ROUNDS = 3  # (d), (e): medians of interleaved rounds
# (a)'s window: its RSS and threads are sampled halfway, 12 s after the streams opened, when the
# threads that carried their first events have retired (HttpServer's idle_thread_timeout,
# 10 s): the steady state. (b) shows the peak, that burst included.
WINDOW_A = 24
# (b): 10,000 streams of 10 events at one event every 2 s (5000 events/s through the proxy), so
# that each lasts about as long as the ramp that opens them all on a loaded machine. The row shows
# how many were open at once: in runs under load, all of them through nginx and 8600 to 9600 of
# 9936 through llama-pool, whose ramp is slower (a thread per stream until its first event).
STREAMS_B, RATE_B, EVENTS_B = 10000, 0.5, 10


def wrk_rows(seconds, rounds):
    """(d) and (e): wrk, keep-alive, at 1 and 64 connections on each target in turn, `rounds`
    times over; the median of each figure, so that a burst of other load on a shared machine
    does not decide a row alone (one connection's p50 moved 5-fold between single runs)."""
    targets = B.start_overhead_targets()
    runs = {}
    for _ in range(rounds):
        for conns in (1, 64):
            for name, port in targets.items():
                r, _ = B.wrk(port, conns, False, seconds)
                runs.setdefault((conns, name), []).append(r)
                B.log(f"targets18 wrk c={conns} {name}: {r['rps']:.0f} rps p50 {r['p50_us']} us "
                      f"p99 {r['p99_us']} us errors {r['errors']}")
    B.cleanup()
    B.PROCESSES.clear()
    return {key: {k: statistics.median_low(r[k] for r in rs) for k in ("rps", "p50_us", "p99_us")}
            for key, rs in runs.items()}


def streams_b(streams, events, build):
    """(b): the rows and, when the descriptor limit holds fewer than `streams`, why the run had
    fewer. Each process in it (this client, the fake, llama-pool, an nginx worker) may need two
    descriptors per stream."""
    needed = 2 * streams + 128
    got = B.raise_nofile(needed)
    note = None
    if got < needed:
        fits = max(0, (got - 128) // 2)
        note = (f"(b) ran {fits:,} streams, not {streams:,}: the descriptor limit is {got} and "
                f"{streams:,} streams need {needed}. Raising the hard limit needs privilege "
                f"(CAP_SYS_RESOURCE), e.g. `ulimit -Hn {needed}` as root before `make bench`.")
        B.log(f"targets18 {note}")
        streams = fits
    rows = [fanout_bench.measure(name, streams, RATE_B, build, events=events)
            for name in ("nginx", "llama-pool")] if streams else []
    return rows, note


def run(args):
    """args: seconds (per wrk run), smoke, build, llama_server, model. Returns the markdown."""
    smoke = args.smoke
    sizes = {"a": 50 if smoke else STREAMS_A, "b": 200 if smoke else STREAMS_B}
    wrk = wrk_rows(args.seconds if smoke else max(2, args.seconds // 2),
                   1 if smoke else WRK_ROUNDS)
    fan = {name: fanout_bench.measure(name, sizes["a"], RATE_A, args.build,
                                      seconds=2 if smoke else WINDOW_A)
           for name in ("nginx", "llama-pool")}
    big = streams_b(sizes["b"], 2 if smoke else EVENTS_B, args.build)
    tok = {r["target"]: r for r in tokenize_bench.run(args.llama_server, args.model, 16,
                                                      1 if smoke else 10)}
    return render(wrk, fan, big, tok, sizes, smoke)


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def row(L, item, measure, pool, nginx, haproxy, ratio, goal, met):
    verdict = "—" if met is None else ("**met**" if met else "**not met**")
    L.append(f"| {item} | {measure} | {pool} | {nginx} | {haproxy} | {ratio} | {goal} "
             f"| {verdict} |")


def render_a(L, fan, streams):
    p, n = fan["llama-pool"], fan["nginx"]
    streams = f"{p['started']:,} of {streams:,} streams delivering"
    ratio = (p["cpu_ms_per_1000_events"] / n["cpu_ms_per_1000_events"]
             if p["cpu_ms_per_1000_events"] and n["cpu_ms_per_1000_events"] else None)
    row(L, "(a)", f"CPU ms per 1000 relayed events, {streams} at {RATE_A} events/s",
        fmt(p["cpu_ms_per_1000_events"], ".1f"), fmt(n["cpu_ms_per_1000_events"], ".1f"), "—",
        fmt(ratio, ".2f"), "≤ 1.0", None if ratio is None else ratio <= 1.0)
    row(L, "(a)", "threads (nginx: all its processes')", p["threads"], n["threads"], "—", "—",
        "≤ 32", p["threads"] <= 32)
    ratio = p["rss_mib"] / n["rss_mib"] if n["rss_mib"] else None
    row(L, "(a)", "RSS MiB (nginx: master and workers)", fmt(p["rss_mib"], ".1f"),
        fmt(n["rss_mib"], ".1f"), "—", fmt(ratio, ".2f"), "≤ 1.5",
        None if ratio is None else ratio <= 1.5)


def render_b(L, big, streams):
    rows, note = big
    if not rows:
        row(L, "(b)", f"{streams:,} concurrent streams", "not run", "not run", "—", "—",
            "all complete", None)
        return
    n, p = rows
    complete = p["completed"] == p["streams"] and p["failed"] == 0
    row(L, "(b)", f"{p['streams']:,} concurrent streams: completed (failed), most open at once",
        f"{p['completed']} ({p['failed']}), {p['peak_open']}",
        f"{n['completed']} ({n['failed']}), {n['peak_open']}", "—", "—",
        f"all {streams:,} complete", None if note else complete)


def render_wrk(L, wrk, tok):
    p, n = tok["llama-pool"], tok["nginx"]
    ratio = p["rps"] / n["rps"] if n["rps"] else None
    row(L, "(c)", "POST /tokenize req/s, real llama-server, 16 keep-alive conns",
        f"{p['rps']:.0f}", f"{n['rps']:.0f}", "—", fmt(ratio, ".2f"), "≥ 1.0",
        None if ratio is None else ratio >= 1.0)
    p, n, h = wrk[(64, "llama-pool")], wrk[(64, "nginx")], wrk[(64, "haproxy")]
    ratio = p["p99_us"] / n["p99_us"] if n["p99_us"] else None
    row(L, "(d)", "p99 µs, fake worker, 64 keep-alive conns", p["p99_us"], n["p99_us"],
        h["p99_us"], fmt(ratio, ".2f"), "≤ 1.5", None if ratio is None else ratio <= 1.5)
    d = wrk[(1, "direct")]["p50_us"]
    added = {name: wrk[(1, name)]["p50_us"] - d for name in ("llama-pool", "nginx", "haproxy")}
    ratio = added["llama-pool"] / added["nginx"] if added["nginx"] > 0 else None
    row(L, "(e)", f"µs added to the p50 over direct ({d} µs), 1 keep-alive conn",
        f"{added['llama-pool']:+d}", f"{added['nginx']:+d}", f"{added['haproxy']:+d}",
        fmt(ratio, ".2f"), "≤ nginx's", added["llama-pool"] <= added["nginx"])


def render(wrk, fan, big, tok, sizes, smoke):
    L = ["| item | measure | llama-pool | nginx | HAProxy | llama-pool / nginx | goal | |",
         "|---|---|---:|---:|---:|---:|---|---|"]
    render_a(L, fan, sizes["a"])
    render_b(L, big, sizes["b"])
    render_wrk(L, wrk, tok)
    L.append("\nThe streams in detail (fanout_bench.py; (a) is a window over streams already "
             "open, (b) opens all the streams in a ramp and reads each to its end, sampling the "
             "proxy's RSS and threads every 0.5 s):\n")
    L.append("| item | target | streams | completed | failed | events/s | delivery p50 ms | p99 ms "
             "| threads | RSS MiB | others' cores busy | load before → after |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name in ("nginx", "llama-pool"):
        r = fan[name]
        L.append(f"| (a) | {name} | {r['started']} delivering | — | {r['failed']} | "
                 f"{r['events_per_s']:.0f} | {fmt(r['p50_ms'], '.2f')} | "
                 f"{fmt(r['p99_ms'], '.2f')} | "
                 f"{r['threads']} | {fmt(r['rss_mib'], '.1f')} | {r['others_cores']:.2f} | "
                 f"{r['load_before']} → {r['load_after']} |")
    for r in big[0]:
        L.append(f"| (b) | {r['target']} | {r['streams']} (peak open {r['peak_open']}) | "
                 f"{r['completed']} | {r['failed']} | — | — | — | {r['threads']} (peak) | "
                 f"{fmt(r['rss_mib'], '.1f')} (peak) | — | "
                 f"{r['load_before']} → {r['load_after']} |")
    L.append(f"\n(a): {RATE_A} events/s per stream, one fake-llama-server with `--stamp-events`, "
             f"a fresh one per target, a {WINDOW_A} s window once all streams deliver; RSS and "
             f"threads sampled in its middle. (b): {EVENTS_B} events per stream at one every "
             f"{1 / RATE_B:g} s; llama-pool runs with `--max-connections` and nginx with "
             "`worker_connections` raised to hold them, the harness raises RLIMIT_NOFILE for "
             "itself and its children. (c): `tokenize_bench.py`, llama-server `-np 4 -t 1` on the "
             "demo model, wrk 2 threads. (d), (e): section 1's setup (`POST /completion` to the "
             "fast fake), "
             f"keep-alive only, the median of {WRK_ROUNDS} interleaved rounds (half of "
             "`--seconds` each).")
    if big[1]:
        L.append(f"\n{big[1]}")
    if smoke:
        L.append("\nSmoke run: tiny sizes and 1 s runs; it checks the harness, not the targets.")
    return "\n".join(L) + "\n"
