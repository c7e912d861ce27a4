#!/usr/bin/env bash
# Checks the observability config shipped in conf/ against a live pool:
#   (a) promtool check config/rules, promtool test rules, the dashboard JSON parses and is
#       well formed;
#   (b) a real llama-pool with 2 fake workers under a short mixed load (with a burst of
#       worker 503s, an admin restart and unauthenticated requests, so retries, restarts
#       and rejections have series), scraped every second by a real Prometheus that loads
#       conf/prometheus/alerts.yml; then every dashboard panel expression must return data,
#       every alert rule expression must evaluate without error, and every metric (and
#       label) an expression names must exist, so no typo survives.
#
# usage: check_observability.sh PATH/TO/llama-pool PATH/TO/fake-llama-server
# Needs promtool and prometheus (Debian's package), curl and python3 (stdlib only).
# Everything listens on 127.0.0.1; Prometheus scrapes nothing else.

set -uo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 LLAMA_POOL_BINARY FAKE_LLAMA_SERVER_BINARY" >&2
    exit 2
fi
POOL_BIN=$(realpath "$1")
FAKE_BIN=$(realpath "$2")
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CONF="$SRC/conf"
DASHBOARD="$CONF/grafana/dashboards/llama-pool.json"
ALERTS="$CONF/prometheus/alerts.yml"
PROMTOOL=${PROMTOOL:-/usr/bin/promtool}
PROMETHEUS=${PROMETHEUS:-/usr/bin/prometheus}
LOAD_SECONDS=${LOAD_SECONDS:-16}

for tool in "$PROMTOOL" "$PROMETHEUS" curl python3; do
    if ! command -v "$tool" >/dev/null; then
        echo "FAIL: $tool not found" >&2
        echo "0 passed, 1 failed"
        exit 1
    fi
done
[ -x "$POOL_BIN" ] || { echo "FAIL: $POOL_BIN is not executable"; echo "0 passed, 1 failed"; exit 1; }
[ -x "$FAKE_BIN" ] || { echo "FAIL: $FAKE_BIN is not executable"; echo "0 passed, 1 failed"; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/llama-pool-observability.XXXXXX")
PASSED=0
FAILED=0
POOL_PID=""
PROM_PID=""
WATCHDOG_PID=""
LOAD_PIDS=()

pass() { PASSED=$((PASSED + 1)); echo "PASS $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL $*"; }

# Stops a process we started: SIGTERM, up to $2 seconds, then SIGKILL; always reaped.
stop_process() {
    local pid=$1 grace=$2 i
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < grace * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "note: pid $pid ignored SIGTERM for ${grace}s, sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${LOAD_PIDS[@]}"; do
        # Each load loop runs in its own process group (set -m): this also ends its curl.
        kill -TERM -- "-$pid" 2>/dev/null
    done
    for pid in "${LOAD_PIDS[@]}"; do
        wait "$pid" 2>/dev/null
    done
    stop_process "$POOL_PID" 15 # the pool stops its own workers before it exits
    stop_process "$PROM_PID" 10
    if [ -n "$WATCHDOG_PID" ]; then
        kill -TERM "$WATCHDOG_PID" 2>/dev/null
        wait "$WATCHDOG_PID" 2>/dev/null
    fi
    if [ $rc -ne 0 ] && [ -n "${KEEP_LOGS:-}" ]; then
        echo "logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The TCP port process $1 listens on, read from its own sockets (Prometheus binds port 0 and
# does not say which port it got); fails while it listens on none.
listen_port() {
    python3 - "$1" <<'PY'
import os, sys
pid = sys.argv[1]
inodes = set()
try:
    for fd in os.listdir("/proc/%s/fd" % pid):
        try:
            target = os.readlink("/proc/%s/fd/%s" % (pid, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    with open("/proc/%s/net/tcp" % pid) as f:
        lines = f.readlines()[1:]
except OSError:
    sys.exit(1)
for line in lines:
    fields = line.split()
    if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
        print(int(fields[1].split(":")[1], 16))
        sys.exit(0)
sys.exit(1)
PY
}

# --------------------------------------------------------------------- (a) static checks
echo "== static checks"
if out=$("$PROMTOOL" check config "$CONF/prometheus/prometheus.yml" 2>&1); then
    pass "promtool check config conf/prometheus/prometheus.yml"
else
    fail "promtool check config conf/prometheus/prometheus.yml"; echo "$out"
fi
if out=$("$PROMTOOL" check rules "$ALERTS" 2>&1); then
    pass "promtool check rules conf/prometheus/alerts.yml"
else
    fail "promtool check rules conf/prometheus/alerts.yml"; echo "$out"
fi
if out=$(cd "$CONF/prometheus" && "$PROMTOOL" test rules alerts_test.yml 2>&1); then
    pass "promtool test rules conf/prometheus/alerts_test.yml"
else
    fail "promtool test rules conf/prometheus/alerts_test.yml"; echo "$out"
fi
if out=$(python3 -m json.tool "$DASHBOARD" 2>&1 >/dev/null); then
    pass "dashboard JSON parses (python3 -m json.tool)"
else
    fail "dashboard JSON does not parse: $out"
fi
# Structure: uid, schema, unique ids, a description and targets on every panel, the
# datasource variable defaulting to the provisioned datasource's uid.
if out=$(python3 - "$DASHBOARD" "$CONF/grafana/provisioning/datasources/prometheus.yml" <<'PY' 2>&1
import json, re, sys
d = json.load(open(sys.argv[1]))
prov = open(sys.argv[2]).read()
problems = []
m = re.search(r'^\s*uid:\s*"?([\w-]+)"?\s*$', prov, re.M)
prov_uid = m.group(1) if m else None
if d.get("uid") != "llama-pool":
    problems.append("uid is not llama-pool")
if not 36 <= d.get("schemaVersion", 0) <= 39:
    problems.append("schemaVersion %r" % d.get("schemaVersion"))
ds_var = [v for v in d["templating"]["list"] if v.get("type") == "datasource"]
if not ds_var or ds_var[0]["current"].get("value") != prov_uid:
    problems.append("datasource variable does not default to provisioned uid %r" % prov_uid)
ids = []
def walk(panels):
    for p in panels:
        ids.append(p["id"])
        if p["type"] == "row":
            walk(p.get("panels", []))
            continue
        if not p.get("description", "").strip():
            problems.append("panel %r has no description" % p["title"])
        if p.get("datasource", {}).get("uid") != "${%s}" % ds_var[0]["name"]:
            problems.append("panel %r does not use the datasource variable" % p["title"])
        if not p.get("targets"):
            problems.append("panel %r has no targets" % p["title"])
        for t in p.get("targets", []):
            if not t.get("expr", "").strip():
                problems.append("panel %r target %s has no expr" % (p["title"], t.get("refId")))
walk(d["panels"])
if len(ids) != len(set(ids)):
    problems.append("duplicate panel ids")
print("; ".join(problems))
sys.exit(1 if problems else 0)
PY
); then
    pass "dashboard structure (uid, schemaVersion, datasource uid, ids, descriptions, targets)"
else
    fail "dashboard structure: $out"
fi

# --------------------------------------------------------------------- (b) live check
echo "== live pool + Prometheus"
set -m # background jobs get their own process group, so cleanup can end a loop and its curl

# Waits up to $1 seconds for command "$2..." to succeed.
wait_for() {
    local seconds=$1 i
    shift
    for ((i = 0; i < seconds * 10; i++)); do
        "$@" && return 0
        sleep 0.1
    done
    return 1
}

# Both servers bind port 0 and the port each got is read back, so no other process can
# take a port between a pick and the bind.
KEY="obs-test-key"
FAULTS="$WORK/faults"
: >"$FAULTS"

# Two model groups of two workers each, so that every dashboard query's group label is
# checked against real series (requests name no model: they go to the default group, chat,
# whose second worker takes the retries).
"$POOL_BIN" --port 0 --workers 2 --llama-server "$FAKE_BIN" \
    --group "chat=$POOL_BIN" --group "other=$FAKE_BIN" \
    --health-interval 0.2 --api-key "$KEY" --breaker-ejection 2 --stop-grace 3 \
    --shutdown-grace 5 --restart-backoff-base 0.2 \
    --worker-arg --tokens-per-second --worker-arg 200 \
    --worker-arg --fault-file --worker-arg "$FAULTS" \
    >"$WORK/pool.log" 2>&1 &
POOL_PID=$!
pool_port_known() {
    POOL_PORT=$(sed -n 's/.*event=listening.* port=\([0-9][0-9]*\).*/\1/p' "$WORK/pool.log" | head -n 1)
    [ -n "$POOL_PORT" ]
}
if ! wait_for 30 pool_port_known; then
    fail "pool did not say which port it listens on"
    tail -n 30 "$WORK/pool.log"
    echo "$PASSED passed, $FAILED failed"
    exit 1
fi
POOL="http://127.0.0.1:$POOL_PORT"

mkdir -p "$WORK/tsdb"
cat >"$WORK/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - "$ALERTS"
scrape_configs:
  - job_name: llama-pool
    static_configs:
      - targets: ["127.0.0.1:$POOL_PORT"]
EOF
"$PROMETHEUS" --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
    --web.listen-address="127.0.0.1:0" --log.level=warn \
    >"$WORK/prometheus.log" 2>&1 &
PROM_PID=$!

# If this script is killed outright (SIGKILL, a test runner's timeout), the trap cannot
# run: this watchdog then stops the pool and Prometheus so that nothing is left behind.
SCRIPT_PID=$$
(
    trap 'exit 0' TERM
    while kill -0 "$SCRIPT_PID" 2>/dev/null; do sleep 1; done
    kill -TERM "$POOL_PID" "$PROM_PID" 2>/dev/null
    sleep 5
    kill -KILL "$POOL_PID" "$PROM_PID" 2>/dev/null
    sleep 1
    rm -rf "$WORK"
) </dev/null >/dev/null 2>&1 &
WATCHDOG_PID=$!
prom_port_known() { PROM_PORT=$(listen_port "$PROM_PID") && [ -n "$PROM_PORT" ]; }
if ! wait_for 30 prom_port_known; then
    fail "prometheus never listened"
    tail -n 30 "$WORK/prometheus.log"
    echo "$PASSED passed, $FAILED failed"
    exit 1
fi
PROM="http://127.0.0.1:$PROM_PORT"

pool_healthy() { curl -s -m 2 "$POOL/health" | grep -q '"status" *: *"ok"'; }
workers_ready() {
    curl -s -m 2 "$POOL/pool/status" | python3 -c '
import json, sys
w = json.load(sys.stdin)["workers"]
sys.exit(0 if len(w) == 4 and all(x["state"] == "ready" for x in w) else 1)' 2>/dev/null
}
prom_ready() { curl -s -m 2 -o /dev/null -w '%{http_code}' "$PROM/-/ready" | grep -q 200; }

if wait_for 30 pool_healthy && wait_for 15 workers_ready; then
    pass "pool on 127.0.0.1:$POOL_PORT is healthy with 4 ready fake workers in 2 groups"
else
    fail "pool did not become healthy with 4 ready workers"
    tail -n 30 "$WORK/pool.log"
    echo "$PASSED passed, $FAILED failed"
    exit 1
fi
if wait_for 30 prom_ready; then
    pass "prometheus on 127.0.0.1:$PROM_PORT is ready"
else
    fail "prometheus did not become ready"
    tail -n 30 "$WORK/prometheus.log"
    echo "$PASSED passed, $FAILED failed"
    exit 1
fi

# ---- load: bounded both in time (deadline) and in count (iterations)
DEADLINE=$(($(date +%s) + LOAD_SECONDS))
load_loop() { # max_iterations curl-args...
    local max=$1 i
    shift
    for ((i = 0; i < max; i++)); do
        [ "$(date +%s)" -lt "$DEADLINE" ] || break
        kill -0 "$SCRIPT_PID" 2>/dev/null || break # the script was killed outright
        curl -s -o /dev/null -m 10 "$@" || true
    done
}
AUTH=(-H "Authorization: Bearer $KEY")
JSON=(-H "Content-Type: application/json")
for _ in 1 2 3; do
    load_loop 400 "${AUTH[@]}" "${JSON[@]}" \
        -d '{"prompt":"Hello from the observability test","n_predict":24}' "$POOL/completion" &
    LOAD_PIDS+=($!)
done
for _ in 1 2 3; do
    load_loop 400 -N "${AUTH[@]}" "${JSON[@]}" \
        -d '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":24,"stream":true}' \
        "$POOL/v1/chat/completions" &
    LOAD_PIDS+=($!)
done
load_loop 200 "${AUTH[@]}" "$POOL/no/such/path" &
LOAD_PIDS+=($!)

# Faults during the load: worker chat.0 answers 503 for a while (retries, breaker), a few
# requests without a key (rejections), an admin restart of worker other.0 (restarts).
worker_port() {
    curl -s -m 2 "$POOL/pool/status" | python3 -c '
import json, sys
print([w["port"] for w in json.load(sys.stdin)["workers"] if w["id"] == sys.argv[1]][0])' "$1"
}
sleep 3
W0_PORT=$(worker_port chat.0)
echo "$W0_PORT fail 503" >"$FAULTS"
for _ in 1 2 3; do
    curl -s -o /dev/null -m 5 "${JSON[@]}" -d '{"prompt":"no key","n_predict":4}' "$POOL/completion"
done
sleep 3
: >"$FAULTS"
sleep 1
curl -s -o /dev/null -m 5 -X POST "$POOL/pool/workers/other.0/restart"

for pid in "${LOAD_PIDS[@]}"; do
    wait "$pid"
done
LOAD_PIDS=()
# Let Prometheus scrape the final counts and evaluate the rules again.
wait_for 20 workers_ready
sleep 3
if [ "$(curl -s -m 2 "$PROM/api/v1/query?query=up" | grep -c '"value"')" -ge 1 ]; then
    pass "prometheus scraped the pool"
else
    fail "prometheus has no 'up' series"
fi

# ---- evaluate every panel expression and every alert rule through the HTTP API
set +m
python3 - "$PROM" "$DASHBOARD" "$ALERTS" "$WORK/counts" <<'PY'
import json, re, sys, urllib.parse, urllib.request

prom, dashboard_path, alerts_path, counts_path = sys.argv[1:5]
passed = failed = 0


def report(ok, text):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
    print(("PASS " if ok else "FAIL ") + text, flush=True)


def api(path, method="POST", **params):
    query = urllib.parse.urlencode(params, doseq=True)
    if method == "GET":
        request = urllib.request.Request(prom + path + "?" + query)
    else:
        request = urllib.request.Request(prom + path, data=query.encode())
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:  # Prometheus answers 400/422 with a JSON error
        try:
            return json.load(e)
        except Exception:
            return {"status": "error", "error": "HTTP %d" % e.code}
    except Exception as e:
        return {"status": "error", "error": str(e)}


# --- a small PromQL scanner: the vector selectors (metric name + matchers) of an expression
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
            "group_left", "group_right", "inf", "nan", "atan2", "start", "end"}
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
TOKEN = re.compile(r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<num>0x[0-9a-fA-F]+|\d[\w.]*(?:[eE][+-]?\d+)?|\.\d+\w*)
  | (?P<ident>[A-Za-z_:][\w:]*)
  | (?P<punct>=~|!~|!=|==|>=|<=|[{}()\[\],=<>+\-*/%^@:])
""", re.X)


def tokens(expr):
    pos, out = 0, []
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m:
            raise ValueError("cannot scan %r" % expr[pos:pos + 20])
        pos = m.end()
        kind = m.lastgroup
        if kind != "ws":
            out.append((kind, m.group(kind)))
    return out


def unquote(s):
    if s[0] == "`":
        return s[1:-1]
    return json.loads('"' + s[1:-1].replace('\\"', '"').replace('"', '\\"') + '"')


def selectors(expr):
    """[(metric name or None, [(label, op, value)])] of every vector selector."""
    t = tokens(expr)
    out, i = [], 0
    while i < len(t):
        kind, text = t[i]
        if kind == "punct" and text == "[":  # range or subquery durations
            while i < len(t) and t[i][1] != "]":
                i += 1
            i += 1
            continue
        if kind == "ident" and text in ("by", "without", "on", "ignoring", "group_left",
                                        "group_right"):
            i += 1
            if i < len(t) and t[i][1] == "(":  # a list of label names
                while i < len(t) and t[i][1] != ")":
                    i += 1
                i += 1
            continue
        nxt = t[i + 1][1] if i + 1 < len(t) else ""
        if kind == "ident" and (text in KEYWORDS or nxt == "(" or
                                (text in AGGREGATIONS and nxt in ("by", "without"))):
            i += 1
            continue
        if (kind == "ident") or (kind == "punct" and text == "{"):
            name = text if kind == "ident" else None
            matchers = []
            j = i + 1 if kind == "ident" else i
            if j < len(t) and t[j][1] == "{":
                j += 1
                while j < len(t) and t[j][1] != "}":
                    if t[j][1] == ",":
                        j += 1
                        continue
                    label, op, value = t[j][1], t[j + 1][1], unquote(t[j + 2][1])
                    matchers.append((label, op, value))
                    j += 3
                j += 1
            if name is None:
                name = next((v for l, o, v in matchers if l == "__name__" and o == "="), None)
                matchers = [m for m in matchers if m[0] != "__name__"]
            out.append((name, matchers))
            i = j
            continue
        i += 1
    return out


series_cache = {}


def series_of(name):
    if name not in series_cache:
        r = api("/api/v1/series", **{"match[]": name})
        series_cache[name] = r.get("data", []) if r.get("status") == "success" else []
    return series_cache[name]


def check_selectors(expr):
    """Problems with the metric names and labels an expression references."""
    problems, seen = [], []
    for name, matchers in selectors(expr):
        if name is None:
            problems.append("selector without a metric name")
            continue
        series = series_of(name)
        if not series:
            problems.append("metric %s has no series" % name)
            continue
        for label, op, value in matchers:
            if value == "" or label == "__name__":
                continue
            values = {s.get(label) for s in series} - {None}
            if not values:
                problems.append("%s has no label %r" % (name, label))
            elif op == "=" and value not in values:
                problems.append("%s{%s=%r}: value not among %s" % (name, label, value,
                                                                   sorted(values)))
        seen.append("%s(%d)" % (name, len(series)))
    return problems, sorted(set(seen))


def one_line(expr):
    return " ".join(expr.split())


# --- dashboard variables
dash = json.load(open(dashboard_path))
variables = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}
instances = sorted({s.get("instance") for s in series_of("llama_pool_build_info")} - {None})
report(bool(instances), "variable instance: label_values(llama_pool_build_info, instance) -> %s"
       % instances)
variables["instance"] = instances[0] if instances else "none"
for v in dash["templating"]["list"]:
    if v["type"] == "datasource":
        variables[v["name"]] = "prometheus"
    elif v["type"] == "query":
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", q)
        if not m:
            report(False, "variable %s: unsupported query %r" % (v["name"], q))
            continue
        sel = re.sub(r"\$(\w+)", lambda mm: variables.get(mm.group(1), mm.group(0)), m.group(1))
        r = api("/api/v1/series", **{"match[]": sel})
        vals = sorted({s.get(m.group(2)) for s in r.get("data", [])} - {None})
        if v["name"] != "instance":
            report(r.get("status") == "success" and bool(vals),
                   "variable %s: %s -> %s" % (v["name"], one_line(q), vals))
        if v["name"] not in variables:
            variables[v["name"]] = v.get("allValue") or ".*" if v.get("includeAll") else (
                vals[0] if vals else "")


def substitute(expr):
    def repl(m):
        name = m.group(1) or m.group(2)
        return variables.get(name, m.group(0))
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr)


# --- every panel target must succeed and return at least one series
def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


for p in all_panels(dash["panels"]):
    for t in p.get("targets", []):
        expr = substitute(t["expr"])
        label = "panel %r [%s]" % (p["title"], t["refId"])
        r = api("/api/v1/query", query=expr)
        if r.get("status") != "success":
            report(False, "%s: query error: %s\n      %s" % (label, r.get("error"), one_line(expr)))
            continue
        n = len(r["data"]["result"])
        problems, seen = check_selectors(expr)
        if n == 0 or problems:
            report(False, "%s: %d series; %s\n      %s" % (label, n, "; ".join(problems) or
                                                          "no data", one_line(expr)))
        else:
            report(True, "%s: %d series" % (label, n))

# --- every alert rule: loaded, healthy, its expression evaluates, its metrics exist
rules_api = api("/api/v1/rules", method="GET", type="alert")
rules = [r for g in rules_api.get("data", {}).get("groups", []) for r in g["rules"]]
declared = re.findall(r"^\s*-\s*alert:\s*(\S+)", open(alerts_path).read(), re.M)
report(sorted(r["name"] for r in rules) == sorted(declared) and len(declared) > 0,
       "prometheus loaded %d alert rules, alerts.yml declares %d: %s"
       % (len(rules), len(declared), ", ".join(declared)))
for rule in rules:
    expr = rule["query"]
    label = "alert %s" % rule["name"]
    problems = []
    if rule.get("health") != "ok":
        problems.append("rule health %r %s" % (rule.get("health"), rule.get("lastError", "")))
    r = api("/api/v1/query", query=expr)
    if r.get("status") != "success":
        problems.append("query error: %s" % r.get("error"))
        n = 0
    else:
        n = len(r["data"]["result"])
    sel_problems, seen = check_selectors(expr)
    problems += sel_problems
    state = rule.get("state", "?")
    if problems:
        report(False, "%s: %s\n      %s" % (label, "; ".join(problems), one_line(expr)))
    else:
        report(True, "%s: evaluates (%d series now, state %s); metrics with series: %s"
               % (label, n, state, ", ".join(seen)))

with open(counts_path, "w") as f:
    f.write("%d %d\n" % (passed, failed))
PY
py_rc=$?
if [ -s "$WORK/counts" ]; then
    read -r p f <"$WORK/counts"
    PASSED=$((PASSED + p))
    FAILED=$((FAILED + f))
fi
if [ $py_rc -ne 0 ] && [ "${f:-0}" = 0 ]; then
    fail "the expression checker itself failed (exit $py_rc)"
fi

# The pool must stop cleanly on SIGTERM, with its workers.
stop_process "$POOL_PID" 15
POOL_PID=""
if grep -q 'fake-llama-server' <(ps -eo pid=,ppid=,args= | awk -v w="$WORK" 'index($0, w)'); then
    fail "fake workers still running after the pool stopped"
else
    pass "pool stopped on SIGTERM and left no worker behind"
fi

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
