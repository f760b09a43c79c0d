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

Usage: scripts/k8s-check.py   (needs Docker and the image: scripts/docker-image.sh)
"""

import json
import os
import secrets
import subprocess
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


def fail(message):
    print(f"k8s-check: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def load_objects():
    objects = []
    for name in sorted(os.listdir(MANIFESTS)):
        if name.endswith((".yaml", ".yml")):
            with open(os.path.join(MANIFESTS, name)) as f:
                objects += [doc for doc in yaml.safe_load_all(f) if doc]
    return objects


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
    for key, value in env.items():
        run += ["--env", f"{key}={value}"]
    if command:
        run += ["--entrypoint", command[0], IMAGE, *command[1:]]
    else:
        run += [IMAGE]
    docker(*run)
    ip = docker("inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", PREFIX + name)
    return name, f"http://{ip}:8080"


def http(method, url, body=None):
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
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


def cluster_status(url):
    status, body = http("GET", url + "/v1/cluster")
    return json.loads(body) if status == 200 else None


def main():
    sts, service = check_manifests(load_objects())
    replicas = sts["spec"]["replicas"]
    print(f"k8s-check: manifests parse; StatefulSet of {replicas} behind headless Service {service}")
    cleanup()
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
    print("k8s-check: ok")


if __name__ == "__main__":
    main()
