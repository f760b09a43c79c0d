#!/usr/bin/python3
"""Checks the Kubernetes manifests as far as it can be done without Kubernetes.

1. Every manifest in cluster/kubernetes/ parses, and the objects a quorumkv cluster needs are
   there and consistent (headless Service publishing not-ready pods, StatefulSet with parallel
   start, per-pod volume claims, probes on /ready and /health, a disruption budget that keeps
   quorum).
2. The exact command, arguments and environment the StatefulSet gives each pod are run in
   containers of the image, with the pods' hostnames and DNS names (quorumkv-N.quorumkv) on a
   private Docker network. They must form a working 3-node cluster: a leader, every pod
   ready, a write through one pod read back linearizably through the others. Then a fourth
   pod (what `kubectl scale --replicas=4` adds) must join as a learner and become a voter.

With --tls, the same for the TLS variant (cluster/kubernetes/tls: the kustomization's patch
merged into the StatefulSet here, as `kubectl apply -k` would): mutual TLS between the pods and
HTTPS for clients, with development certificates from the image's `quorumkv certs init`
mounted where the Secret would be; the pods are reached over HTTPS trusting only that CA.

Usage: scripts/k8s-check.py [--tls]   (needs Docker and the image: scripts/docker-image.sh)
"""

import json
import os
import secrets
import shutil
import ssl
import subprocess
import tempfile
import sys
import time
import urllib.error
import urllib.request

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFESTS = os.path.join(REPO, "cluster", "kubernetes")
NETWORK = "qkv-k8s-check"
PREFIX = "qkv-k8s-check-"
DEADLINE_SECONDS = 60
IMAGE = os.environ.get("QUORUMKV_IMAGE", "quorumkv:dev")
PEER_TOKEN = secrets.token_hex(32)
TLS = "--tls" in sys.argv[1:]
TLS_SECRET = "quorumkv-tls"
# The Secret's files, made by main() with --tls; mounted where the pods mount the Secret.
TLS_DIR = tempfile.mkdtemp(prefix="qkv-k8s-tls-") if TLS else None
SSL_CONTEXT = None


def fail(message):
    print(f"k8s-check: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def load_objects():
    objects = []
    for name in sorted(os.listdir(MANIFESTS)):
        if name.endswith((".yaml", ".yml")):
            with open(os.path.join(MANIFESTS, name)) as f:
                objects += [doc for doc in yaml.safe_load_all(f) if doc]
    if TLS:
        objects = apply_kustomization(os.path.join(MANIFESTS, "tls"), objects)
    return objects


def strategic_merge(base, patch):
    """Kubernetes' strategic merge, as far as these manifests use it: maps merge, lists of
    named objects merge by name, other lists and values are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = strategic_merge(base[key], value) if key in base else value
        return merged
    named = lambda items: isinstance(items, list) and all(isinstance(i, dict) and "name" in i for i in items)
    if named(base) and named(patch):
        merged = list(base)
        for item in patch:
            index = next((i for i, b in enumerate(merged) if b["name"] == item["name"]), None)
            if index is None:
                merged.append(item)
            else:
                merged[index] = strategic_merge(merged[index], item)
        return merged
    return patch


def apply_kustomization(directory, objects):
    with open(os.path.join(directory, "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    if kustomization.get("resources") != ["../quorumkv.yaml"]:
        fail("the TLS kustomization must build on ../quorumkv.yaml")
    for entry in kustomization.get("patches", []):
        with open(os.path.join(directory, entry["path"])) as f:
            patch = yaml.safe_load(f)
        targets = [o for o in objects if (o["kind"], o["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"])]
        if len(targets) != 1:
            fail(f"patch {entry['path']} matches {len(targets)} objects")
        objects[objects.index(targets[0])] = strategic_merge(targets[0], patch)
    return objects


def make_tls_secret():
    """The files of the quorumkv-tls Secret, as the kustomization's comment makes them."""
    global SSL_CONTEXT
    hosts = ",".join(["quorumkv-client"] + [f"quorumkv-{i}.quorumkv" for i in range(10)])
    work = tempfile.mkdtemp(prefix="qkv-k8s-certs-")
    try:
        docker("run", "--rm", "--user", f"{os.getuid()}:{os.getgid()}", "-v", f"{work}:/certs",
               "--entrypoint", "quorumkv", IMAGE, "certs", "init", "/certs/dev", "--nodes", "1", "--hosts", hosts)
        for secret_name, made in [("ca.pem", "ca.pem"), ("node.pem", "node-1.pem"), ("node-key.pem", "node-1-key.pem")]:
            shutil.copy(os.path.join(work, "dev", made), os.path.join(TLS_DIR, secret_name))
            # A Secret volume's files are readable by the pod's group (defaultMode 0440, fsGroup);
            # a bind mount has no fsGroup, so readable by all here.
            os.chmod(os.path.join(TLS_DIR, secret_name), 0o444)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    SSL_CONTEXT = ssl.create_default_context(cafile=os.path.join(TLS_DIR, "ca.pem"))
    # The pods are reached by IP from here; their certificate names their DNS names. The chain
    # is still verified against the development CA alone.
    SSL_CONTEXT.check_hostname = False


def check_manifests(objects):
    by_kind = {}
    for obj in objects:
        for field in ("apiVersion", "kind", "metadata"):
            if field not in obj:
                fail(f"object without {field}: {obj}")
        by_kind.setdefault(obj["kind"], []).append(obj)
    statefulsets = by_kind.get("StatefulSet", [])
    if len(statefulsets) != 1:
        fail(f"expected one StatefulSet, found {len(statefulsets)}")
    sts = statefulsets[0]
    spec = sts["spec"]
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    headless = services.get(spec["serviceName"])
    if headless is None or headless["spec"].get("clusterIP") != "None":
        fail("the StatefulSet's serviceName must name a headless Service (clusterIP: None)")
    if not headless["spec"].get("publishNotReadyAddresses"):
        fail("the headless Service must publish not-ready pods, or peers cannot find each other")
    if spec.get("podManagementPolicy") != "Parallel":
        fail("podManagementPolicy must be Parallel: founding pods must start together")
    if not spec.get("volumeClaimTemplates"):
        fail("the StatefulSet needs a volumeClaimTemplate (a volume per pod)")
    container = spec["template"]["spec"]["containers"][0]
    scheme = "HTTPS" if TLS else "HTTP"
    for probe in ("readinessProbe", "livenessProbe"):
        if container.get(probe, {}).get("httpGet", {}).get("scheme", "HTTP") != scheme:
            fail(f"{probe} must use {scheme}")
    if container.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/ready":
        fail("readiness must probe /ready")
    if container.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/health":
        fail("liveness must probe /health")
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    claim = spec["volumeClaimTemplates"][0]["metadata"]["name"]
    if mounts.get(claim) != "/data":
        fail("the volume claim must be mounted at /data")
    budgets = by_kind.get("PodDisruptionBudget", [])
    replicas = spec["replicas"]
    if len(budgets) != 1:
        fail("expected one PodDisruptionBudget")
    budget = budgets[0]["spec"]
    quorum = replicas // 2 + 1
    allowed_down = budget.get("maxUnavailable", replicas - budget.get("minAvailable", replicas))
    if replicas - allowed_down < quorum:
        fail(f"the PodDisruptionBudget allows {allowed_down} of {replicas} pods down: quorum lost")
    return sts, headless["metadata"]["name"]


def pod_environment(container, pod_name):
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[item["name"]] = pod_name
        elif item.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "quorumkv-peer-token":
            # The Secret the operator creates (see the manifest): one random token per check.
            env[item["name"]] = PEER_TOKEN
        else:
            fail(f"env {item['name']}: only values, metadata.name and the peer token Secret are checked here")
    return env


def docker(*args, check=True):
    result = subprocess.run(["docker", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        fail(f"docker {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


def start_pod(sts, service, ordinal):
    name = f"{sts['metadata']['name']}-{ordinal}"
    container = sts["spec"]["template"]["spec"]["containers"][0]
    security = sts["spec"]["template"]["spec"].get("securityContext", {})
    env = pod_environment(container, name)
    command = container.get("command", []) + container.get("args", [])
    run = ["run", "-d", "--name", PREFIX + name, "--hostname", name, "--network", NETWORK,
           "--network-alias", f"{name}.{service}"]
    if "runAsUser" in security:
        run += ["--user", f"{security['runAsUser']}:{security.get('runAsGroup', security['runAsUser'])}"]
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"].get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        secret = volumes.get(mount["name"], {}).get("secret", {}).get("secretName")
        if secret == TLS_SECRET and TLS_DIR:
            run += ["-v", f"{TLS_DIR}:{mount['mountPath']}:ro"]
        elif secret is not None:
            fail(f"volume {mount['name']}: only the {TLS_SECRET} Secret is checked here")
    for key, value in env.items():
        run += ["--env", f"{key}={value}"]
    if command:
        run += ["--entrypoint", command[0], IMAGE, *command[1:]]
    else:
        run += [IMAGE]
    docker(*run)
    ip = docker("inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", PREFIX + name)
    scheme = "https" if TLS else "http"
    return name, f"{scheme}://{ip}:8080"


def http(method, url, body=None):
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5, context=SSL_CONTEXT) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except (urllib.error.URLError, OSError) as error:
        return 0, str(error)


def eventually(what, condition):
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    fail(f"timed out waiting for: {what}")


def cleanup():
    names = docker("ps", "-aq", "--filter", f"name={PREFIX}", check=False).split()
    if names:
        docker("rm", "-f", "-v", *names, check=False)
    docker("network", "rm", NETWORK, check=False)
    if TLS_DIR:
        shutil.rmtree(TLS_DIR, ignore_errors=True)


def cluster_status(url):
    status, body = http("GET", url + "/v1/cluster")
    return json.loads(body) if status == 200 else None


def main():
    sts, service = check_manifests(load_objects())
    replicas = sts["spec"]["replicas"]
    variant = " (TLS variant)" if TLS else ""
    print(f"k8s-check: manifests parse{variant}; StatefulSet of {replicas} behind headless Service {service}")
    cleanup()
    if TLS:
        os.makedirs(TLS_DIR, exist_ok=True)
        make_tls_secret()
    docker("network", "create", NETWORK)
    pods = {}
    try:
        for ordinal in range(replicas):
            name, url = start_pod(sts, service, ordinal)
            pods[name] = url
        urls = list(pods.values())

        def leader():
            status = cluster_status(urls[0])
            return status and status.get("leader_id")

        leader_id = eventually("a leader", leader)
        eventually("every pod ready (/ready)", lambda: all(http("GET", u + "/ready")[0] == 200 for u in urls))
        status, body = http("PUT", urls[0] + "/v1/kv/k8s-check", b"formed")
        if status != 200:
            fail(f"PUT through {list(pods)[0]}: {status} {body}")
        for name, url in pods.items():
            status, body = http("GET", url + "/v1/kv/k8s-check")
            if (status, body) != (200, "formed"):
                fail(f"linearizable GET through {name}: {status} {body}")
        members = cluster_status(urls[0])["members"]
        peers = sorted(m["peer_addr"] for m in members)
        print(f"k8s-check: {replicas} pods formed a cluster (leader node {leader_id}), peers {peers}")

        # What `kubectl scale statefulset quorumkv --replicas=4` adds: pod ordinal 3 joins.
        name, url = start_pod(sts, service, replicas)
        new_id = replicas + 1

        def promoted():
            status = cluster_status(urls[0])
            return status and any(m["id"] == new_id and m["voter"] for m in status["members"])

        eventually(f"{name} joined and was promoted to voter", promoted)
        eventually(f"{name} serves a linearizable read", lambda: http("GET", url + "/v1/kv/k8s-check") == (200, "formed"))
        print(f"k8s-check: {name} joined as node {new_id} and became a voter")
    except SystemExit:
        for name in list(pods) + [f"{sts['metadata']['name']}-{replicas}"]:
            logs = subprocess.run(["docker", "logs", "--tail", "20", PREFIX + name], capture_output=True, text=True)
            print(f"--- {name}\n{logs.stdout}{logs.stderr}", file=sys.stderr)
        raise
    finally:
        cleanup()
    print(f"k8s-check: ok{variant}")


if __name__ == "__main__":
    main()
