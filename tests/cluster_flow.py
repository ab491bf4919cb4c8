"""Helpers and fixtures of the user's-flow tests on the single-node cluster (tests/cluster.py):
moto's S3 server on the bridge, `helm install` of the chart with the built images, `kubectl apply`
of an experiment and what was seen while it ran."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from tests.cluster import BRIDGE_IP
from tests.envtest import REPO_ROOT, wait_until
from tests.helm import Helm, ensure_helm

EXPERIMENTS_NS = "experiments"
RELEASE_NS = "kubetune-system"
S3_ENV = {"AWS_ACCESS_KEY_ID": "cluster-test-key", "AWS_SECRET_ACCESS_KEY": "cluster-test-secret",
          "AWS_DEFAULT_REGION": "us-east-1"}
# What fits the node's 2 allocatable CPUs next to the driver (the chart's driver.cpu below).
SMALL = {
    "trialResources": {"cpu": 0.5},
    "rayCluster": {"head": {"cpu": "250m", "memory": "1536Mi"},
                   "workerGroups": [{"name": "cpu", "replicas": 1, "cpu": 1, "memory": "3Gi"}]},
}


class PodS3(NamedTuple):
    endpoint: str
    client: object  # boto3's S3 client, as this process reaches the server
    access_log: Path  # moto's log: one line per request, starting with the client's address


@pytest.fixture(scope="session")
def pod_s3(node_cluster, tmp_path_factory):
    """moto's S3 server on the bridge address: the pods and this process reach it."""
    port = cluster_free_port()
    log = tmp_path_factory.mktemp("moto") / "access.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", BRIDGE_IP, "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://{BRIDGE_IP}:{port}"
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"])
    wait_until(lambda: client.list_buckets() is not None, timeout=60, interval=0.3, message="moto_server")
    client.create_bucket(Bucket="results")
    try:
        yield PodS3(endpoint, client, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_REQUEST = re.compile(r'^(\S+) - - \[[^]]*\] "[A-Z]+ [^"]*" (\d{3}) ')


def s3_requests_by_client(access_log: Path, offset: int = 0) -> Counter:
    """Requests in moto's access log after byte `offset`, by client address."""
    with open(access_log, "rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
    return Counter(m.group(1) for m in map(_REQUEST.match, text.splitlines()) if m)


def cluster_free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((BRIDGE_IP, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def kubetune_installed(node_cluster, trial_image, operator_image):
    """`helm install` of the chart: the operator as a pod, drivers' RBAC in the experiments namespace."""
    ensure_helm()
    node_cluster.plane.create_namespace(EXPERIMENTS_NS)
    helm = Helm(node_cluster.plane.admin_kubeconfig)
    repo, tag = operator_image.rsplit(":", 1)
    trepo, ttag = trial_image.rsplit(":", 1)
    t0 = time.monotonic()
    helm.install("kubetune", RELEASE_NS, {
        "operator": {"image": {"repository": repo, "tag": tag, "pullPolicy": "Never"}},
        "experiments": {"trialImage": {"repository": trepo, "tag": ttag}, "imagePullPolicy": "Never",
                        "driver": {"cpu": "250m", "memory": "1Gi"}},
        "driverRBAC": {"namespaces": [EXPERIMENTS_NS]},
    })
    try:
        node_cluster.kubectl("wait", "-n", RELEASE_NS, "--for=condition=Available", "deployment", "--all",
                        "--timeout=300s", timeout=320)
    except subprocess.CalledProcessError as exc:
        pods = node_cluster.kubectl("describe", "pods", "-n", RELEASE_NS, check=False).stdout
        pytest.fail(f"operator not Available: {exc.stderr}\n{pods[-4000:]}")
    print(f"\n[cluster] helm install → operator Available in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    return helm


def experiment_doc(example: str, name: str, endpoint: str, prefix: str, **extra) -> dict:
    doc = yaml.safe_load((REPO_ROOT / "examples" / example).read_text())
    doc["metadata"] = {"name": name, "namespace": EXPERIMENTS_NS}
    spec = doc["spec"]
    spec.update(copy.deepcopy(SMALL))
    spec["storage"] = {"uri": f"s3://results/{prefix}", "endpoint": endpoint, "secretRef": "s3-credentials"}
    spec.update(extra)
    return doc


def _get(node_cluster, name: str) -> dict:
    status, body = node_cluster.plane.request("GET", f"/apis/kubetune.io/v1alpha1/namespaces/{EXPERIMENTS_NS}/tuneexperiments/{name}")
    assert status == 200, body
    return body


def _pod_ips(node_cluster, name: str, component: str) -> set[str]:
    status, body = node_cluster.plane.request(
        "GET", f"/api/v1/namespaces/{EXPERIMENTS_NS}/pods?labelSelector=kubetune.io/experiment={name},kubetune.io/component={component}")
    return {p["status"].get("podIP") for p in body.get("items", []) if p["status"].get("podIP")}


def run_on_cluster(node_cluster, doc: dict, timeout: float = 1500, while_running=None) -> dict:
    """kubectl apply; poll until Succeeded/Failed; what was seen while it ran, and when."""
    name = doc["metadata"]["name"]
    t0 = time.monotonic()
    node_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    try:
        return _watch(node_cluster, doc, t0, timeout, while_running)
    finally:
        # The node has room for one experiment's pods at a time: the next test needs them gone.
        node_cluster.kubectl("delete", "tunex", "-n", EXPERIMENTS_NS, name, "--wait=true", "--timeout=120s",
                        check=False, timeout=150)
        with contextlib.suppress(TimeoutError):  # never hide the test's own failure
            wait_until(lambda: not _experiment_pods(node_cluster, name), timeout=120, interval=1,
                       message=f"pods of {name} gone")


def _experiment_pods(node_cluster, name: str) -> list:
    status, body = node_cluster.plane.request(
        "GET", f"/api/v1/namespaces/{EXPERIMENTS_NS}/pods?labelSelector=kubetune.io/experiment={name}")
    return body.get("items", [])


def _watch(node_cluster, doc: dict, t0: float, timeout: float, while_running) -> dict:
    name = doc["metadata"]["name"]
    seen: dict = {"phases": [], "get_tunex": [], "worker_ips": set(), "driver_ips": set(), "t0": t0}
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        status = _get(node_cluster, name).get("status") or {}
        phase = status.get("phase")
        if not seen["phases"] or seen["phases"][-1][0] != phase:
            seen["phases"].append((phase, round(time.monotonic() - t0, 1)))  # where the time goes
        if status.get("bestTrial") and "first_result_s" not in seen:
            seen["first_result_s"] = time.monotonic() - t0
        if status.get("trials", {}).get("running") and "first_trial_running_s" not in seen:
            seen["first_trial_running_s"] = round(time.monotonic() - t0, 1)
        if phase == "Running" and status.get("bestTrial") and len(seen["get_tunex"]) < 3:
            seen["get_tunex"].append(node_cluster.kubectl("get", "tunex", "-n", EXPERIMENTS_NS, name, check=False).stdout)
        seen["worker_ips"] |= _pod_ips(node_cluster, name, "worker")
        seen["driver_ips"] |= _pod_ips(node_cluster, name, "driver")
        if while_running is not None and phase == "Running":
            while_running(status, seen)
        if phase in ("Succeeded", "Failed"):
            seen["done_s"] = time.monotonic() - t0
            seen["status"] = status
            return seen
        time.sleep(0.5)
    events = node_cluster.kubectl("get", "events", "-n", EXPERIMENTS_NS, "--sort-by=.lastTimestamp", check=False).stdout
    pods = node_cluster.kubectl("get", "pods", "-n", EXPERIMENTS_NS, "-o", "wide", check=False).stdout
    op = node_cluster.kubectl("logs", "-n", RELEASE_NS, "deploy/kubetune", "--tail=40", check=False)
    pytest.fail(f"{name} not finished after {timeout}s; phases {seen['phases']}; status {status}\n"
                f"pods:\n{pods}\nevents:\n{events[-4000:]}\noperator:\n{op.stdout}{op.stderr}")


def result_rows(client, prefix: str) -> tuple[dict[str, list[dict]], int]:
    """Every trial's reported iterations (the history in the driver's kubetune-results.json, by trial id)
    and the number of checkpoint files under `prefix` in S3."""
    rows: dict[str, list[dict]] = {}
    checkpoints, results = 0, []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="results", Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if "/checkpoint_" in key:
                checkpoints += 1
            if key.endswith("/kubetune-results.json"):
                results.append(key)
    assert len(results) == 1, f"one kubetune-results.json under s3://results/{prefix}, found {results}"
    doc = json.loads(client.get_object(Bucket="results", Key=results[0])["Body"].read())
    for trial in doc["trials"]:
        assert trial["id"] not in rows, f"trial {trial['id']} listed twice"
        rows[trial["id"]] = trial["history"]
    return rows, checkpoints


def create_s3_secret(node_cluster) -> None:
    secret = {"metadata": {"name": "s3-credentials"}, "stringData": S3_ENV}
    status, body = node_cluster.plane.request("POST", f"/api/v1/namespaces/{EXPERIMENTS_NS}/secrets", secret)
    assert status in (201, 409), body


def kubetune_run_locally(doc: dict) -> float:
    """`kubetune run` of the same experiment on this machine (embedded Ray, local storage)."""
    local = copy.deepcopy(doc)
    local["metadata"].pop("namespace", None)
    with tempfile.TemporaryDirectory() as tmp:
        local["spec"]["storage"] = {"uri": str(Path(tmp) / "results")}
        path = Path(tmp) / "experiment.yaml"
        path.write_text(yaml.safe_dump(local))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT / "trial-image")])}
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "kubetune", "run", str(path)], capture_output=True, text=True,
                              env=env, timeout=1200, cwd=tmp)
        took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return took


