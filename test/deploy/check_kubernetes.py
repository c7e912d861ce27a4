#!/usr/bin/env python3
"""The Kubernetes manifests parse, are plausible, and probe endpoints the binary serves.

Usage: check_kubernetes.py BUILD/llama-pool
Loads docker/kubernetes/*.yaml, checks kinds and the fields the objects need, that the
front discovers the workers' headless Service by a dns:// upstream that names it, that the
manifests apply to any namespace (none set, none in a DNS name), that every container says
how its image is pulled and runs as the image's numeric non-root user, that every claim a
pod mounts is defined, and starts the real binary to make sure every probe path answers
(not 404). Every object of the core manifests is also validated against the Kubernetes API's
own schemas with the npm package kubernetes-models (installed once into ~/.cache/llama-pool,
offline after that).

The optional manifests in inference-gateway/ (InferencePool, endpoint picker config) and
autoscaling/ (HPA with its prometheus-adapter rule, KEDA ScaledObject) need CRDs and
controllers no test here has, and no maintained schema validator for the CRDs is packaged in
Debian, so their structure is checked here field by field against the API versions they
name: selectors match the worker pods, ports match their container port, the engine config
is the one the pods' label selects, and every metric they name is one the live binary
exports as a gauge.
"""
import glob
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
passed = failed = 0


def check(name, ok, detail=""):
    global passed, failed
    ok = bool(ok)
    print(("PASS " if ok else "FAIL ") + name + ("" if ok else f": {detail}"))
    passed, failed = passed + ok, failed + (not ok)


docs = []
for path in sorted(glob.glob(os.path.join(ROOT, "docker", "kubernetes", "*.yaml"))):
    with open(path) as f:
        docs += [d for d in yaml.safe_load_all(f) if d]
check("manifests parse", len(docs) >= 4, f"{len(docs)} documents")
optional = {}
for folder in ("inference-gateway", "autoscaling"):
    for path in sorted(glob.glob(os.path.join(ROOT, "docker", "kubernetes", folder, "*.yaml"))):
        with open(path) as f:
            optional[f"{folder}/{os.path.basename(path)}"] = [d for d in yaml.safe_load_all(f) if d]
kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
for want in [("Deployment", "llama-pool-workers"), ("Service", "llama-pool-workers"),
             ("Deployment", "llama-pool-front"), ("Service", "llama-pool")]:
    check(f"{want[0]} {want[1]} exists", want in kinds)
services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
check("workers Service is headless", services["llama-pool-workers"]["spec"].get("clusterIP") == "None")

# The image's USER, which must be a number for runAsNonRoot to verify it.
with open(os.path.join(ROOT, "docker", "Dockerfile")) as f:
    users = re.findall(r"^USER +(\S+)", f.read(), re.M)
image_uid = users[-1].split(":")[0] if users else ""
check("Dockerfile USER is a numeric non-root uid", image_uid.isdigit() and int(image_uid) != 0,
      image_uid)

for d in docs + [d for file_docs in optional.values() for d in file_docs]:
    check(f"{d['kind']} {d['metadata']['name']}: no hard-coded namespace",
          "namespace" not in d["metadata"], d["metadata"].get("namespace"))
claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}

probe_paths = set()
for d in docs:
    if d["kind"] != "Deployment":
        continue
    spec = d["spec"]
    name = d["metadata"]["name"]
    pod = spec["template"]["spec"]
    for v in pod.get("volumes", []):
        claim = v.get("persistentVolumeClaim", {}).get("claimName")
        if claim is not None:
            check(f"{name}: claim {claim} is defined by a manifest", claim in claims, sorted(claims))
    check(f"{d['metadata']['name']}: selector matches template labels",
          spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items())
    for c in pod["containers"]:
        check(f"{name}: container {c['name']} sets imagePullPolicy",
              c.get("imagePullPolicy") in ("IfNotPresent", "Always", "Never"),
              c.get("imagePullPolicy"))
        # The container's own securityContext overrides the pod's, field by field.
        security = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
        check(f"{name}: container {c['name']} runs as non-root",
              security.get("runAsNonRoot") is True, security)
        check(f"{name}: container {c['name']} runs as the image's numeric uid {image_uid}",
              isinstance(security.get("runAsUser"), int)
              and str(security.get("runAsUser")) == image_uid, security.get("runAsUser"))
        for probe in ("readinessProbe", "livenessProbe"):
            path = c.get(probe, {}).get("httpGet", {}).get("path")
            check(f"{d['metadata']['name']}: {probe} is an HTTP probe", path is not None)
            if path:
                probe_paths.add(path)
        args = c.get("args", [])
        if d["metadata"]["name"] == "llama-pool-front":
            upstream = args[args.index("--upstream") + 1] if "--upstream" in args else ""
            # The short name: the pod's DNS search path resolves it in whatever namespace
            # (and cluster domain) the manifests were applied to.
            check("front discovers the headless workers Service by DNS, in its own namespace",
                  upstream == "dns://llama-pool-workers:8081", upstream)
check("readiness uses /health", "/health" in probe_paths)

# The optional manifests, field by field.
def one(file, kind):
    found = [d for d in optional.get(file, []) if d.get("kind") == kind]
    check(f"{file} holds one {kind}", len(found) == 1, [d.get("kind") for d in optional.get(file, [])])
    return found[0] if found else {}


workers = next(d for d in docs if d["kind"] == "Deployment"
               and d["metadata"]["name"] == "llama-pool-workers")
worker_labels = workers["spec"]["template"]["metadata"]["labels"]
worker_ports = {p["containerPort"] for c in workers["spec"]["template"]["spec"]["containers"]
                for p in c.get("ports", [])}
engine = worker_labels.get("llm-d.ai/engine-type")
check("worker pods carry an llm-d.ai/engine-type label", bool(engine), worker_labels)
wanted_metrics = set()  # every metric a manifest names, checked against the live binary

pool = one("inference-gateway/inference-pool.yaml", "InferencePool")
check("InferencePool is inference.networking.k8s.io/v1",
      pool.get("apiVersion") == "inference.networking.k8s.io/v1", pool.get("apiVersion"))
pool_spec = pool.get("spec", {})
selector = pool_spec.get("selector", {})
check("InferencePool selects with matchLabels only (v1 allows no expressions)",
      set(selector) == {"matchLabels"} and selector["matchLabels"], selector)
check("InferencePool selects the worker pods",
      selector.get("matchLabels", {}).items() <= worker_labels.items(), selector)
ports = pool_spec.get("targetPorts", [])
check("InferencePool targets the workers' container port",
      isinstance(ports, list) and 1 <= len(ports) <= 8
      and all(isinstance(p, dict) and set(p) == {"number"} and p["number"] in worker_ports
              for p in ports), ports)
picker = pool_spec.get("endpointPickerRef", {})
check("InferencePool names its endpoint picker Service and port",
      isinstance(picker.get("name"), str) and picker.get("name")
      and isinstance(picker.get("port", {}).get("number"), int)
      and picker.get("failureMode", "FailClose") in ("FailOpen", "FailClose"), picker)
check("InferencePool spec has only v1 fields",
      set(pool_spec) <= {"selector", "targetPorts", "appProtocol", "endpointPickerRef"},
      sorted(pool_spec))

config_map = one("inference-gateway/endpoint-picker-config.yaml", "ConfigMap")
epp = {}
for text in config_map.get("data", {}).values():
    epp = yaml.safe_load(text) or {}
check("endpoint picker config is an EndpointPickerConfig",
      epp.get("kind") == "EndpointPickerConfig", epp.get("kind"))
plugins = epp.get("plugins", [])
declared = {p.get("name", p.get("type")) for p in plugins}
refs = [r.get("pluginRef") for prof in epp.get("schedulingProfiles", [])
        for r in prof.get("plugins", [])]
check("every scheduling profile refers to a declared plugin",
      refs and all(r in declared for r in refs), (refs, sorted(declared)))
extractors = [p for p in plugins if p.get("type") == "core-metrics-extractor"]
params = extractors[0].get("parameters", {}) if extractors else {}
check("the metrics extractor reads the pods' engine label",
      params.get("engineLabelKey", "llm-d.ai/engine-type") == "llm-d.ai/engine-type", params)
engines = {e.get("name"): e for e in params.get("engineConfigs", [])}
config = engines.get(engine, {})
check(f"an engine config is named {engine!r}, as the worker pods' label", bool(config),
      sorted(engines))
for field, metric in (("queuedRequestsSpec", "llama_pool_requests_waiting"),
                      ("runningRequestsSpec", "llama_pool_requests_running"),
                      ("kvUsageSpec", "llama_pool_kv_cache_usage_ratio")):
    check(f"engine config maps {field} to {metric}", config.get(field) == metric,
          config.get(field))
    wanted_metrics.add(metric)

hpa = one("autoscaling/hpa.yaml", "HorizontalPodAutoscaler")
check("HPA is autoscaling/v2", hpa.get("apiVersion") == "autoscaling/v2", hpa.get("apiVersion"))
hpa_spec = hpa.get("spec", {})
target = hpa_spec.get("scaleTargetRef", {})
check("HPA scales the workers Deployment",
      (target.get("apiVersion"), target.get("kind"), target.get("name"))
      == ("apps/v1", "Deployment", "llama-pool-workers"), target)
check("HPA replica bounds are sane",
      1 <= hpa_spec.get("minReplicas", 1) <= hpa_spec.get("maxReplicas", 0), hpa_spec)
metrics = hpa_spec.get("metrics", [])
external = [m["external"] for m in metrics if m.get("type") == "External" and "external" in m]
check("HPA has an External metric", len(external) == 1, metrics)
hpa_metric = external[0].get("metric", {}).get("name") if external else None
hpa_target = external[0].get("target", {}) if external else {}
check("HPA scales on llama_pool_requests_waiting", hpa_metric == "llama_pool_requests_waiting",
      hpa_metric)
check("HPA target is an AverageValue quantity",
      hpa_target.get("type") == "AverageValue"
      and re.fullmatch(r"[0-9]+(\.[0-9]+)?m?", str(hpa_target.get("averageValue", ""))),
      hpa_target)
wanted_metrics.add(hpa_metric or "")
rule_map = one("autoscaling/hpa.yaml", "ConfigMap")
rules = []
for text in rule_map.get("data", {}).values():
    rules = (yaml.safe_load(text) or {}).get("externalRules", [])
served = [r for r in rules if r.get("name", {}).get("as") == hpa_metric]
check("the prometheus-adapter rule serves the HPA's metric", len(served) == 1, rules)
rule = served[0] if served else {}
check("the adapter rule reads the pool-wide series only",
      'group=""' in rule.get("metricsQuery", "")
      and "llama_pool_requests_waiting" in rule.get("seriesQuery", ""), rule)

scaled = one("autoscaling/keda-scaledobject.yaml", "ScaledObject")
check("ScaledObject is keda.sh/v1alpha1", scaled.get("apiVersion") == "keda.sh/v1alpha1",
      scaled.get("apiVersion"))
keda_spec = scaled.get("spec", {})
check("ScaledObject scales the workers Deployment",
      keda_spec.get("scaleTargetRef", {}).get("name") == "llama-pool-workers"
      and keda_spec.get("scaleTargetRef", {}).get("kind", "Deployment") == "Deployment",
      keda_spec.get("scaleTargetRef"))
check("ScaledObject replica bounds are sane",
      1 <= keda_spec.get("minReplicaCount", 0) <= keda_spec.get("maxReplicaCount", 0), keda_spec)
triggers = keda_spec.get("triggers", [])
prom = [t.get("metadata", {}) for t in triggers if t.get("type") == "prometheus"]
check("ScaledObject has one prometheus trigger", len(prom) == 1, triggers)
meta = prom[0] if prom else {}
check("the trigger queries the pool-wide llama_pool_requests_waiting",
      "llama_pool_requests_waiting" in meta.get("query", "") and 'group=""' in meta.get("query", ""),
      meta.get("query"))
check("the trigger's serverAddress and threshold are set (threshold a number, as a string)",
      str(meta.get("serverAddress", "")).startswith("http")
      and isinstance(meta.get("threshold"), str)
      and re.fullmatch(r"[0-9]+(\.[0-9]+)?", meta["threshold"]), meta)

# The probe paths exist in the binary# The probe paths exist in the binary: a pool with no workers answers them (not 404).
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
pool = subprocess.Popen([sys.argv[1], "--port", str(port), "--workers", "0"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    deadline = time.time() + 10
    for path in sorted(probe_paths):
        status = 0
        while time.time() < deadline:
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2).status
                break
            except urllib.error.HTTPError as e:
                status = e.code
                break
            except OSError:
                time.sleep(0.05)
        check(f"probe path {path} is served by llama-pool (status {status})", status not in (0, 404))
    text = ""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError as e:
        text = str(e)
    for metric in sorted(wanted_metrics):
        check(f"{metric}, named by a manifest, is exported as a gauge",
              f"# TYPE {metric} gauge\n" in text and f"\n{metric} " in text, metric)
finally:
    pool.terminate()
    pool.wait(10)

# The Kubernetes API's schemas (types, required fields, enums), from a maintained npm package
# that bundles them (generated from the Kubernetes release's OpenAPI spec); kept in the same
# cache as the llama.cpp toolchain, so only the first run on a machine needs the registry.
SCHEMAS_PACKAGE = "kubernetes-models@4.5.1"  # 5.x needs node 22; Debian and CI have 20
cache = os.environ.get("LLAMA_POOL_CACHE") or os.path.expanduser("~/.cache/llama-pool")
schemas = os.path.join(cache, "npm-" + SCHEMAS_PACKAGE.replace("@", "-"))
if not os.path.isdir(os.path.join(schemas, "node_modules", "kubernetes-models")):
    install = subprocess.run(["npm", "install", "--prefix", schemas, "--no-save", "--no-audit",
                              "--no-fund", SCHEMAS_PACKAGE], capture_output=True, text=True)
    check(f"npm installs {SCHEMAS_PACKAGE}", install.returncode == 0, install.stderr[-2000:])
# The optional manifests' objects of core APIs (the HPA, the adapter's ConfigMap) are
# validated too; the CRDs' (InferencePool, KEDA) have no schema here.
core_apis = ("v1", "apps/v1", "autoscaling/v2")
validated = docs + [d for objs in optional.values() for d in objs
                    if d.get("apiVersion") in core_apis]
validation = subprocess.run(
    ["node", os.path.join(ROOT, "test", "deploy", "kubernetes_schema.mjs"),
     os.path.join(schemas, "node_modules")], input=json.dumps(validated), capture_output=True,
    text=True)
for line in validation.stdout.splitlines():
    check(line.split(" ", 1)[1], line.startswith("PASS "), line)
check("schema validation ran on every object",
      validation.stdout.count("\n") == len(validated), validation.stderr[-2000:])

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
