#!/usr/bin/env python3
"""The Kubernetes manifests parse, are plausible, and probe endpoints the binary serves.

Usage: check_kubernetes.py BUILD/llama-pool
Loads docker/kubernetes/*.yaml, checks kinds and the fields the objects need, that the
front discovers the workers' headless Service by a dns:// upstream that names it, that the
manifests apply to any namespace (none set, none in a DNS name), that every container says
how its image is pulled and runs as the image's numeric non-root user, that every claim a
pod mounts is defined, and starts the real binary to make sure every probe path answers
(not 404). Every object is also validated against the Kubernetes API's own schemas with the
npm package kubernetes-models (installed once into ~/.cache/llama-pool, offline after that).
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
    print(("PASS " if ok else "FAIL ") + name + ("" if ok else f": {detail}"))
    passed, failed = passed + ok, failed + (not ok)


docs = []
for path in sorted(glob.glob(os.path.join(ROOT, "docker", "kubernetes", "*.yaml"))):
    with open(path) as f:
        docs += [d for d in yaml.safe_load_all(f) if d]
check("manifests parse", len(docs) >= 4, f"{len(docs)} documents")
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

for d in docs:
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

# The probe paths exist in the binary: a pool with no workers answers them (not 404).
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
validation = subprocess.run(
    ["node", os.path.join(ROOT, "test", "deploy", "kubernetes_schema.mjs"),
     os.path.join(schemas, "node_modules")], input=json.dumps(docs), capture_output=True,
    text=True)
for line in validation.stdout.splitlines():
    check(line.split(" ", 1)[1], line.startswith("PASS "), line)
check("schema validation ran on every object",
      validation.stdout.count("\n") == len(docs), validation.stderr[-2000:])

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
