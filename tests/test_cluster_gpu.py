"""GPU requests on the real single-node cluster (tests/cluster.py): the node advertises an extended
resource `nvidia.com/gpu` (capacity patched on the Node's status, as a device plugin would), a worker
group asks for one GPU, trials ask for half a GPU: the worker pod requests it, Ray sees the GPU and
packs two trials on it (the sleep trainable needs no CUDA)."""

from __future__ import annotations

import json
import re
import uuid

import pytest

from tests.cluster import CLUSTER_MARKS
from tests.cluster_flow import EXPERIMENTS_NS, create_s3_secret, experiment_doc, run_on_cluster

pytestmark = CLUSTER_MARKS


@pytest.fixture
def node_with_gpus(node_cluster):
    patch = {"status": {"capacity": {"nvidia.com/gpu": "2"}}}
    node_cluster.kubectl("patch", "node", node_cluster.node_name, "--subresource=status", "--type=merge", "-p", json.dumps(patch))
    yield node_cluster.node_name
    node_cluster.kubectl("patch", "node", node_cluster.node_name, "--subresource=status", "--type=json",
                    "-p", '[{"op": "remove", "path": "/status/capacity/nvidia.com~1gpu"}]', check=False)


def test_fractional_trial_gpus_on_a_gpu_worker_group(node_cluster, kubetune_installed, pod_s3, node_with_gpus):
    endpoint = pod_s3.endpoint
    create_s3_secret(node_cluster)
    name = f"gpu-{uuid.uuid4().hex[:4]}"
    doc = experiment_doc("sleep-asha.yaml", name, endpoint, name)
    spec = doc["spec"]
    spec["trainable"]["config"] = {"iterations": 10, "sleep_s": 0.5}
    spec["search"]["numSamples"] = 4
    spec["scheduler"] = {"type": "fifo"}
    spec["trialResources"] = {"cpu": 0.25, "gpu": 0.5}
    spec["rayCluster"]["workerGroups"] = [{"name": "gpu", "replicas": 1, "cpu": 1, "memory": "3Gi", "gpu": 1}]

    def watch_ray(status, seen):
        pods = json.loads(node_cluster.kubectl("get", "pods", "-n", EXPERIMENTS_NS, "-l",
                                          f"kubetune.io/experiment={name}", "-o", "json").stdout)["items"]
        for pod in pods:
            kind = pod["metadata"]["labels"].get("ray.io/node-type")
            if kind == "worker":
                seen["worker_limits"] = pod["spec"]["containers"][0]["resources"]["limits"]
            if kind == "head" and pod["status"].get("phase") == "Running" and (status.get("trials") or {}).get("running"):
                out = node_cluster.kubectl("exec", "-n", EXPERIMENTS_NS, pod["metadata"]["name"], "-c", "ray-head", "--",
                                      "ray", "status", check=False, timeout=60).stdout
                seen.setdefault("gpu_usage", []).extend(re.findall(r"[0-9.]+/[0-9.]+ GPU", out))

    seen = run_on_cluster(node_cluster, doc, while_running=watch_ray)
    status = seen["status"]
    assert status["phase"] == "Succeeded", (seen["phases"], status)
    assert status["trials"]["total"] == 4 and status["trials"].get("error", 0) == 0, status["trials"]
    assert seen["worker_limits"].get("nvidia.com/gpu") == "1", seen.get("worker_limits")
    usage = seen.get("gpu_usage", [])
    assert usage and all(u.endswith("/1.0 GPU") for u in usage), usage  # Ray sees the worker's one GPU
    assert "1.0/1.0 GPU" in usage, usage  # two half-GPU trials packed on it
    print(f"\n[cluster] GPU: worker limits {seen['worker_limits']}, ray status GPU usage seen {sorted(set(usage))}")
