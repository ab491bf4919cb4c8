"""The RayCluster kubetune's operator builds, run by the real KubeRay operator on the real
single-node cluster (tests/cluster.py): head and worker pods of the trial image become Ready
(KubeRay's own readiness probes) and the worker joins the head's Ray cluster."""

from __future__ import annotations

import time

import pytest

from kubetune.api.load import load_spec
from kubetune.controller.builders import build_raycluster
from kubetune.controller.settings import Settings
from tests.cluster import CLUSTER_MARKS
from tests.envtest import wait_until

pytestmark = CLUSTER_MARKS

# 2 CPUs are allocatable on this node: Ray pods must ask for little.
SMALL_SPEC = {
    "trainable": {"entrypoint": "kubetune_trials.sleep:train"},
    "objective": {"metric": "score", "mode": "max"},
    "parameters": {"x": {"uniform": {"min": 0.0, "max": 1.0}}},
    "trialResources": {"cpu": 0.5},
    "rayCluster": {
        "head": {"cpu": "250m", "memory": "1536Mi"},
        "workerGroups": [{"name": "cpu", "replicas": 1, "cpu": 1, "memory": "2Gi"}],
    },
}


def _pods(node_cluster, namespace: str) -> list[dict]:
    status, body = node_cluster.plane.request("GET", f"/api/v1/namespaces/{namespace}/pods")
    assert status == 200, body
    return body["items"]


def _ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def diagnostics(node_cluster, namespace: str) -> str:
    events = node_cluster.kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False).stdout
    pods = node_cluster.kubectl("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout
    return (f"pods:\n{pods}\nevents:\n{events[-4000:]}\nkuberay-operator:\n{node_cluster.logs('kuberay-operator', 30)}"
            f"\nkubelet:\n{node_cluster.logs('kubelet', 30)}")


def test_raycluster_head_and_worker_ready_under_kuberay(node_cluster, trial_image):
    namespace = node_cluster.plane.create_namespace()
    settings = Settings.from_env({}, trial_image=trial_image, image_pull_policy="Never")
    spec = load_spec(SMALL_SPEC)
    rc = build_raycluster("rc-smoke", namespace, spec, settings)
    status, body = node_cluster.plane.request("POST", f"/apis/ray.io/v1/namespaces/{namespace}/rayclusters", rc)
    assert status == 201, body

    t0 = time.monotonic()
    try:
        pods = wait_until(
            lambda: (lambda ps: ps if len(ps) == 2 and all(_ready(p) for p in ps) else None)(_pods(node_cluster, namespace)),
            timeout=600, interval=1, message="head and worker pods Ready",
        )
    except TimeoutError as exc:
        pytest.fail(f"{exc}\n{diagnostics(node_cluster, namespace)}")
    ready_s = time.monotonic() - t0
    components = sorted(p["metadata"]["labels"].get("ray.io/node-type") for p in pods)
    assert components == ["head", "worker"]

    state = wait_until(
        lambda: (node_cluster.plane.request("GET", f"/apis/ray.io/v1/namespaces/{namespace}/rayclusters/rc-smoke")[1]
                 .get("status", {}).get("state") == "ready"),
        timeout=120, interval=1, message="RayCluster state ready")
    assert state

    # The worker joined the head's Ray: `ray status` inside the head counts 2 nodes' CPUs (0 on the head).
    head = next(p for p in pods if p["metadata"]["labels"]["ray.io/node-type"] == "head")
    out = wait_until(
        lambda: (lambda r: r.stdout if r.returncode == 0 and "/1.0 CPU" in r.stdout else None)(
            node_cluster.kubectl("exec", "-n", namespace, head["metadata"]["name"], "-c", "ray-head", "--",
                            "ray", "status", check=False, timeout=60)),
        timeout=120, interval=2, message="ray status shows the worker's CPU")
    print(f"\n[cluster] RayCluster head+worker Ready in {ready_s:.1f}s\n{out}")
