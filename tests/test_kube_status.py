"""The driver patches its TuneExperiment's status with plain HTTPS and its service account's token, on a
real kube-apiserver with the driver's RBAC (issue #10 point 1: the trial image has no `kubernetes`)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.operator_fixtures import driver_kubeconfig, experiment_manifest

pytestmark = pytest.mark.kube
ROOT = Path(__file__).resolve().parents[1]

PATCH = """
import json, math, sys
from kubetune.driver_main import StatusPatcher, status_fields
from kubetune.tune.tracking import Snapshot, TrialRecord
assert "kubernetes" not in sys.modules
trials = [
    TrialRecord("a", "terminated", {"x": 0.5}, 0.9, 3, {"score": 0.9}, "s3://b/a/checkpoint_000002"),
    TrialRecord("b", "stopped", {"x": 0.1}, 0.2, 1, {"score": 0.2}, None),
    TrialRecord("c", "interrupted", {"x": float("nan")}, None, 2, {"score": float("inf")}, None),
    TrialRecord("d", "pending", {"x": 0.7}, None, 0, {}, None),
]
patcher = StatusPatcher(sys.argv[1], sys.argv[2], interval_s=0)
patcher(Snapshot("score", "max", 5, trials))
assert "kubernetes" not in sys.modules
print("patched")
"""


def _patch(tmp_path, name, namespace, env):
    shadow = tmp_path / "without" / "kubernetes"
    shadow.mkdir(parents=True, exist_ok=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'kubernetes'\", name='kubernetes')\n")
    pythonpath = os.pathsep.join([str(tmp_path / "without"), os.environ.get("PYTHONPATH", "")])
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KUBECONFIG", "KUBERNETES_"))}
    return subprocess.run([sys.executable, "-c", PATCH, name, namespace], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**base, "PYTHONPATH": pythonpath, **env})


def _check(cluster, name):
    status = cluster.status(name)
    assert status["trials"] == {"total": 5, "pending": 2, "running": 0, "terminated": 1, "stopped": 1,
                                "error": 0, "interrupted": 1}, status
    assert status["bestTrial"]["id"] == "a" and status["bestTrial"]["metric"] == 0.9 and status["progress"] == "2/5"


def test_status_patched_through_a_kubeconfig_without_the_kubernetes_package(kube, namespace, cluster, tmp_path):
    kubeconfig = driver_kubeconfig(kube, namespace, tmp_path / "driver.kubeconfig")
    cluster.create(experiment_manifest("patched"))
    result = _patch(tmp_path, "patched", namespace, {"KUBECONFIG": str(kubeconfig)})
    assert result.returncode == 0 and "patched" in result.stdout, result.stderr
    _check(cluster, "patched")


def test_status_patched_in_a_pod_with_the_mounted_service_account(kube, namespace, cluster, tmp_path):
    import yaml

    kubeconfig = yaml.safe_load(driver_kubeconfig(kube, namespace, tmp_path / "driver.kubeconfig").read_text())
    sa_dir = tmp_path / "serviceaccount"  # what the kubelet mounts at /var/run/secrets/kubernetes.io/serviceaccount
    sa_dir.mkdir()
    (sa_dir / "token").write_text(kubeconfig["users"][0]["user"]["token"])
    shutil.copy(kube.ca_file, sa_dir / "ca.crt")
    cluster.create(experiment_manifest("inpod"))
    host, port = kube.url.removeprefix("https://").rsplit(":", 1)
    result = _patch(tmp_path, "inpod", namespace, {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port,
                                                   "KUBETUNE_SERVICE_ACCOUNT_DIR": str(sa_dir)})
    assert result.returncode == 0 and "patched" in result.stdout, result.stderr
    _check(cluster, "inpod")
