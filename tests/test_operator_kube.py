"""The operator against a real kube-apiserver + kube-controller-manager (tests/envtest.py).

The operator runs as `kubetune operator` in a subprocess with the kubeconfig of its service account,
bound to the chart's ClusterRole (charts/kubetune, rendered by helm): a permission the chart lacks fails a test. There
is no KubeRay and no kubelet: the tests play them (RayCluster status, pod status), and the Job
controller and garbage collector are the real ones. One test runs the driver pod's real command
against a local Ray head and moto's S3.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import signal
import subprocess
import time
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from kubetune.api.load import apply_overrides, load_experiment_file
from kubetune.api.smoke import smoke_overrides
from kubetune.api.spec import TuneExperimentSpec
from kubetune.controller import builders
from kubetune.controller.settings import Settings
from tests.envtest import REPO_ROOT, wait_until
from tests.operator_fixtures import (
    VENV_BIN, Cluster, _create, _kill_group, can_i, driver_kubeconfig, experiment_manifest, free_port,
    local_ray_head, namespaced_operator_kubeconfig, rbac_documents, rules_review, user_role_documents,
)

pytestmark = [pytest.mark.kube]

FAULT_ENV = "KUBETUNE_FAULT_KILL_AFTER_WRITES"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}


def dry_run(kube, path: str, body: dict) -> tuple[int, dict]:
    """Server-side dry-run create, rejecting unknown fields (so a field the schema would prune fails)."""
    return kube.request("POST", f"{path}?dryRun=All&fieldValidation=Strict", body)


def reasons(cluster: Cluster, name: str) -> list[str]:
    # Timestamps have whole seconds; on this single etcd the resourceVersion gives the creation order.
    events = sorted(cluster.events(name), key=lambda e: int(e["metadata"]["resourceVersion"]))
    return [e["reason"] for e in events]


def wait_for(predicate, message: str, timeout: float = 30, op=None):
    try:
        return wait_until(predicate, timeout=timeout, interval=0.2, message=message)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{op.tail() if op else ''}") from None


def job_of(cluster: Cluster, name: str, op=None) -> dict:
    return wait_for(lambda: next(iter(cluster.jobs(name)), None), f"the driver Job of {name}", op=op)


def start_experiment(cluster: Cluster, name: str, op) -> str:
    """Create experiment `name`, play KubeRay making its RayCluster ready; return the name of the driver Job that follows."""
    cluster.create(experiment_manifest(name))
    cluster.wait_phase(name, "Provisioning", op=op)
    cluster.mark_raycluster(name)
    return job_of(cluster, name, op)["metadata"]["name"]


# ---------------------------------------------------------------- every builder on the real API server


def test_every_builder_is_accepted_by_the_api_server_and_the_kuberay_schema(kube, namespace):
    spec = TuneExperimentSpec.model_validate({
        "trainable": {"entrypoint": "kubetune_trials.mnist:train", "image": "example.com/trials:1"},
        "objective": {"metric": "mean_accuracy", "mode": "max"},
        "storage": {"uri": "s3://bucket/prefix", "endpoint": "http://minio:9000", "secretRef": "s3-credentials"},
        "rayCluster": {
            "head": {"cpu": "2", "memory": "8Gi", "nodeSelector": {"pool": "cpu"},
                     "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ray", "effect": "NoSchedule"}],
                     "rayStartParams": {"object-store-memory": "1000000000"}},
            "workerGroups": [
                {"name": "gpu", "replicas": 1, "minReplicas": 0, "maxReplicas": 4, "cpu": "8", "memory": "32Gi", "gpu": 1,
                 "nodeSelector": {"nvidia.com/gpu.present": "true"},
                 "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
                {"name": "cpu", "replicas": 2, "cpu": "4", "memory": "16Gi"},
            ],
            "enableAutoscaling": True, "serviceAccountName": "ray-pods",
        },
    })
    settings = Settings()
    cm = builders.build_configmap("exp", namespace, spec)
    rc = builders.build_raycluster("exp", namespace, spec, settings)
    job = builders.build_driver_job("exp", namespace, spec, settings)
    for path, body in (
        (f"/api/v1/namespaces/{namespace}/configmaps", cm),
        (f"/apis/ray.io/v1/namespaces/{namespace}/rayclusters", rc),
        (f"/apis/batch/v1/namespaces/{namespace}/jobs", job),
    ):
        code, answer = dry_run(kube, path, body)
        assert code == 201, f"{body['kind']} rejected: {json.dumps(answer)[:2000]}"
        assert answer["spec" if "spec" in body else "data"], answer
    # The KubeRay schema kept every field (fieldValidation=Strict would have refused unknown ones).
    code, answer = dry_run(kube, f"/apis/ray.io/v1/namespaces/{namespace}/rayclusters", rc)
    workers = answer["spec"]["workerGroupSpecs"]
    assert workers[0]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert workers[0]["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert answer["spec"]["autoscalerOptions"]["idleTimeoutSeconds"] == settings.autoscaler_idle_timeout_seconds
    assert answer["spec"]["authOptions"] == {"mode": "token"}
    # And a manifest KubeRay's schema does not know is refused, so the checks above mean something.
    rc["spec"]["headGroupSpec"]["notAField"] = True
    code, _ = dry_run(kube, f"/apis/ray.io/v1/namespaces/{namespace}/rayclusters", rc)
    assert code == 400


def test_the_operators_account_reads_no_secret_and_its_rules_are_printed(kube, namespace, operator_kubeconfig):
    """`kubectl auth can-i --list` of the operator's service account (cluster-wide install)."""
    rows = rules_review(kube, operator_kubeconfig, namespace)
    print("\n[rbac] kubectl auth can-i --list --as=system:serviceaccount:kubetune-system:kubetune-operator")
    for row in rows:
        print(f"  {','.join(row.get('resources') or row.get('urls'))}  {row.get('names') or ''}  {row['verbs']}")
    granted = {r for row in rows for r in row.get("resources", [])}
    assert not [r for r in granted if r.startswith("secrets")], "the operator must not read Secrets"
    for verb in ("get", "list", "watch"):
        assert not can_i(kube, operator_kubeconfig, verb, "secrets", namespace)
    assert can_i(kube, operator_kubeconfig, "create", "jobs", namespace, "batch")
    assert not can_i(kube, operator_kubeconfig, "delete", "pods", namespace)


# ---------------------------------------------------------------- bad input


def test_invalid_spec_fails_naming_the_field_creates_nothing_and_others_go_on(kube, namespace, cluster, operator_factory):
    op = operator_factory([namespace])
    # Passes the CRD (a grid list is untyped there, so CEL cannot see it), fails the model: grid with hyperopt.
    bad = experiment_manifest("bad", search={"algorithm": "hyperopt", "numSamples": 2, "seed": 1},
                              parameters={"bs": {"grid": [16, 32]}})
    cluster.create(bad)
    cluster.create(experiment_manifest("good"))
    status = cluster.wait_phase("bad", "Failed", op=op)
    spec_valid = cluster.condition("bad", "SpecValid")
    assert spec_valid["status"] == "False" and spec_valid["reason"] == "InvalidSpec"
    assert "spec.parameters.bs.grid" in spec_valid["message"] and "random or grid" in spec_valid["message"]
    assert "spec.parameters.bs.grid" in status["message"]
    events = [e for e in cluster.events("bad") if e["reason"] == "InvalidSpec"]
    assert events and events[0]["type"] == "Warning" and "spec.parameters.bs.grid" in events[0]["message"]
    cluster.wait_phase("good", "Provisioning", op=op)  # the operator keeps reconciling the others
    time.sleep(1)
    assert cluster.children("bad") == {"RayCluster": 0, "Job": 0, "ConfigMap": 0}

    # Fixing the spec starts the experiment.
    cluster.patch_spec("bad", {"search": {"algorithm": "random"}})
    cluster.wait_phase("bad", "Provisioning", op=op)
    assert cluster.condition("bad", "SpecValid")["status"] == "True"
    assert cluster.children("bad")["RayCluster"] == 1
    assert op.alive and op.starts == 1, "the operator crashed"


def test_missing_storage_secret_shows_from_the_pods_and_missing_service_account_waits(kube, namespace, cluster, operator_factory, tmp_path):
    op = operator_factory([namespace])
    cluster.create(experiment_manifest("s3", storage={"uri": "s3://bucket/exp", "endpoint": "http://minio:9000",
                                                      "secretRef": "s3-credentials"}))
    cluster.wait_phase("s3", "Provisioning", op=op)
    assert cluster.condition("s3", "StorageReady")["reason"] == "SecretReferenced"
    # The operator cannot read Secrets: the kubelet tells, on the head pod KubeRay made (played here).
    cluster.play_kuberay_pod("s3", "head", ("CreateContainerConfigError", 'secret "s3-credentials" not found'))
    wait_for(lambda: cluster.condition("s3", "StorageReady").get("reason") == "SecretNotFound",
             "StorageReady=False, SecretNotFound", op=op)
    storage = cluster.condition("s3", "StorageReady")
    assert storage["status"] == "False" and "s3-credentials" in storage["message"]
    time.sleep(3)  # a few re-checks: still one Warning
    assert reasons(cluster, "s3").count("SecretNotFound") == 1

    secret_value = f"sk-{uuid.uuid4().hex}"
    cluster.core.create_namespaced_secret(namespace, {"metadata": {"name": "s3-credentials"}, "stringData": {
        "AWS_ACCESS_KEY_ID": "AKIATEST", "AWS_SECRET_ACCESS_KEY": secret_value}})
    # No driver ServiceAccount in this namespace yet: the operator says so instead of a Job that cannot start.
    cluster.mark_raycluster("s3")
    wait_for(lambda: cluster.condition("s3", "DriverRunning").get("reason") == "ServiceAccountNotFound",
             "DriverRunning=False, ServiceAccountNotFound", op=op)
    assert "kubetune-driver" in cluster.condition("s3", "DriverRunning")["message"]
    assert cluster.jobs("s3") == [] and "ServiceAccountNotFound" in reasons(cluster, "s3")
    driver_kubeconfig(kube, namespace, tmp_path / "driver.kubeconfig")
    job_of(cluster, "s3", op)
    rc = cluster.raycluster("s3")
    env = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s3-credentials", "key": "AWS_SECRET_ACCESS_KEY"}}} in env
    # The value is nowhere but in its Secret.
    visible = json.dumps([cluster.get("s3"), rc, cluster.configmaps("s3"), cluster.events("s3")]) + op.tail(400)
    assert secret_value not in visible and base64.b64encode(secret_value.encode()).decode() not in visible
    assert "Traceback" not in op.tail(2000)


def test_raycluster_failed_by_kuberay_fails_the_experiment_with_its_reason(kube, namespace, cluster, operator_factory):
    op = operator_factory([namespace])
    cluster.create(experiment_manifest("quota"))
    cluster.wait_phase("quota", "Provisioning", op=op)
    cluster.mark_raycluster("quota", state="failed",
                            reason='pods "quota-head-x" is forbidden: exceeded quota: compute, requested: limits.cpu=2')
    status = cluster.wait_phase("quota", "Failed", op=op)
    ready = cluster.condition("quota", "RayClusterReady")
    assert ready["reason"] == "RayClusterFailed" and "exceeded quota" in ready["message"]
    assert "exceeded quota" in status["message"] and status.get("completionTime")
    wait_for(lambda: cluster.raycluster("quota") is None, "the failed RayCluster to be deleted (cleanup)", op=op)
    assert cluster.jobs("quota") == []


# ---------------------------------------------------------------- the lifecycle, KubeRay and kubelet played by the test


def test_lifecycle_provisioning_running_succeeded(kube, namespace, cluster, operator_factory, driver_rbac):
    metrics_port = free_port()
    op = operator_factory([namespace], KUBETUNE_METRICS_PORT=str(metrics_port))
    created = cluster.create(experiment_manifest("life"))
    uid = created["metadata"]["uid"]
    status = cluster.wait_phase("life", "Provisioning", op=op)
    assert status["startTime"] and status["observedGeneration"] == 1 and status["rayClusterName"] == "life"
    assert cluster.jobs("life") == [], "no driver before the RayCluster is ready"

    # Every child: owned by the experiment (controller), labelled.
    rc = cluster.raycluster("life")
    cm = cluster.configmaps("life")[0]
    for child, component in ((rc, "ray-cluster"), (cm, "spec")):
        refs = child["metadata"]["ownerReferences"]
        assert [(r["kind"], r["uid"], r["controller"]) for r in refs] == [("TuneExperiment", uid, True)]
        assert child["metadata"]["labels"]["kubetune.io/experiment"] == "life"
        assert child["metadata"]["labels"]["kubetune.io/component"] == component
        assert child["metadata"]["labels"]["app.kubernetes.io/name"] == "kubetune"
    assert rc["spec"]["headGroupSpec"]["template"]["metadata"]["labels"]["kubetune.io/component"] == "head"
    assert rc["spec"]["workerGroupSpecs"][0]["template"]["metadata"]["labels"]["kubetune.io/component"] == "worker"
    assert json.loads(cm["data"]["spec.json"])["search"]["numSamples"] == 2

    cluster.mark_raycluster("life")
    cluster.wait_phase("life", "Running", op=op)
    job = job_of(cluster, "life", op)
    assert job["metadata"]["ownerReferences"][0]["uid"] == uid
    assert job["metadata"]["labels"]["kubetune.io/component"] == "driver"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] + container["args"] == [
        "kubetune", "driver", "--spec", "/etc/kubetune/spec.json", "--name", "life", "--namespace", namespace, "--patch-status"]
    env = {e["name"]: e for e in container["env"]}
    assert env["RAY_ADDRESS"]["value"] == "life-head-svc:6379"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "life", "key": "auth_token"}
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "kubetune-driver"

    pod = cluster.wait_driver_pod(job["metadata"]["name"])
    kube.set_pod_phase(namespace, pod["metadata"]["name"], "Running")
    wait_for(lambda: cluster.condition("life", "DriverRunning").get("status") == "True", "DriverRunning", op=op)
    # The driver's own fields, written while it runs, survive the operator's status patches.
    cluster.patch_status("life", {"trials": {"total": 2, "pending": 0, "running": 1, "terminated": 1, "error": 0},
                                  "progress": "1/2", "bestTrial": {"id": "t1", "metric": 0.9}})
    kube.set_pod_phase(namespace, pod["metadata"]["name"], "Succeeded", exit_code=0)
    status = cluster.wait_phase("life", "Succeeded", op=op)
    assert status["completionTime"] and status["progress"] == "1/2" and status["bestTrial"]["metric"] == 0.9
    complete = cluster.condition("life", "Complete")
    assert complete["status"] == "True" and complete["reason"] == "TrialBudgetExhausted"
    wait_for(lambda: cluster.raycluster("life") is None, "the RayCluster to be deleted at the end", op=op)
    assert cluster.condition("life", "RayClusterReady")["reason"] == "RayClusterDeleted"
    assert reasons(cluster, "life") == ["RayClusterCreating", "LocalStorage", "RayClusterReady", "DriverSucceeded"]
    assert [e["reason"] for e in cluster.events("life") if e["type"] == "Warning"] == ["LocalStorage"]
    assert cluster.condition("life", "StorageReady")["reason"] == "LocalStorage"
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    assert 'kubetune_operator_phase_transitions_total{phase="Succeeded"} 1.0' in metrics
    assert re.search(r'kubetune_operator_reconciles_total\{result="ok",trigger="create"\} [1-9]', metrics)


def test_driver_failing_past_its_retry_budget_fails_the_experiment(kube, namespace, cluster, operator_factory, driver_rbac):
    op = operator_factory([namespace], KUBETUNE_DRIVER_BACKOFF_LIMIT="1",
                          KUBETUNE_DELETE_RAY_CLUSTER_ON_FINISH="false")
    job = start_experiment(cluster, "flaky", op)
    first = cluster.wait_driver_pod(job)
    kube.set_pod_phase(namespace, first["metadata"]["name"], "Failed", exit_code=1)
    # The Job replaces the dead pod (the new driver resumes from storage); the experiment keeps running.
    second = cluster.wait_driver_pod(job, timeout=40, exclude={first["metadata"]["name"]})
    assert cluster.status("flaky")["phase"] == "Running"
    wait_for(lambda: "after 1 failed pod" in cluster.condition("flaky", "DriverRunning").get("message", ""),
             "the retry to show in DriverRunning", op=op)
    kube.set_pod_phase(namespace, second["metadata"]["name"], "Failed", exit_code=1)
    status = cluster.wait_phase("flaky", "Failed", timeout=40, op=op)
    driver = cluster.condition("flaky", "DriverRunning")
    assert driver["reason"] == "DriverFailed" and "BackoffLimitExceeded" in driver["message"]
    assert cluster.condition("flaky", "Complete")["reason"] == "DriverFailed"
    assert status["completionTime"]
    events = [e for e in cluster.events("flaky") if e["reason"] == "DriverFailed"]
    assert events and events[0]["type"] == "Warning"
    # KUBETUNE_DELETE_RAY_CLUSTER_ON_FINISH=false is the default for experiments that do not say.
    time.sleep(1)
    assert cluster.raycluster("flaky") is not None


def test_suspend_removes_cluster_and_driver_and_resume_continues(kube, namespace, cluster, operator_factory, driver_rbac):
    op = operator_factory([namespace])
    job = start_experiment(cluster, "pause", op)
    kube.set_pod_phase(namespace, cluster.wait_driver_pod(job)["metadata"]["name"], "Running")
    started = cluster.wait_phase("pause", "Running", op=op)["startTime"]

    cluster.patch_spec("pause", {"suspend": True})
    cluster.wait_phase("pause", "Suspended", op=op)
    wait_for(lambda: cluster.raycluster("pause") is None and cluster.jobs("pause") == [],
             "the RayCluster and the driver Job to be deleted", op=op)
    assert len(cluster.configmaps("pause")) == 1, "the spec (and the storage) stay"
    for type_ in ("RayClusterReady", "DriverRunning"):
        assert cluster.condition("pause", type_)["reason"] == "Suspended"

    cluster.patch_spec("pause", {"suspend": False})
    status = cluster.wait_phase("pause", "Provisioning", op=op)
    assert status["startTime"] == started and status.get("completionTime") is None
    cluster.mark_raycluster("pause")
    cluster.wait_phase("pause", "Running", op=op)
    assert [j["metadata"]["name"] for j in cluster.jobs("pause")] == [job], "the same run continues"
    assert "Resumed" in reasons(cluster, "pause") and "Suspended" in reasons(cluster, "pause")


def test_raising_num_samples_continues_a_finished_experiment(kube, namespace, cluster, operator_factory, driver_rbac):
    op = operator_factory([namespace])
    first_job = start_experiment(cluster, "more", op)
    kube.set_pod_phase(namespace, cluster.wait_driver_pod(first_job)["metadata"]["name"], "Succeeded", exit_code=0)
    cluster.wait_phase("more", "Succeeded", op=op)
    wait_for(lambda: cluster.raycluster("more") is None, "the RayCluster to be deleted", op=op)

    spec = cluster.get("more")["spec"]
    spec["search"]["numSamples"] = 4
    cluster.patch_spec("more", {"search": spec["search"]})
    status = cluster.wait_phase("more", "Provisioning", op=op)
    assert status.get("completionTime") is None
    resumed = [e for e in cluster.events("more") if e["reason"] == "Resumed"]
    assert resumed and "starting over (local storage was not kept)" in resumed[0]["message"]
    wait_for(lambda: cluster.raycluster("more") is not None, "the RayCluster to be recreated", op=op)
    cm = cluster.configmaps("more")[0]
    assert json.loads(cm["data"]["spec.json"])["search"]["numSamples"] == 4
    cluster.mark_raycluster("more")
    cluster.wait_phase("more", "Running", op=op)
    wait_for(lambda: [j["metadata"]["name"] for j in cluster.jobs("more")] not in ([], [first_job]),
             "a new driver Job", op=op)
    jobs = [j["metadata"]["name"] for j in cluster.jobs("more")]
    assert len(jobs) == 1 and jobs[0] != first_job and cluster.status("more")["driverJobName"] == jobs[0]
    assert "Resumed" in reasons(cluster, "more")


# ---------------------------------------------------------------- deletion, hand edits, restarts


def test_deleting_the_experiment_removes_every_child_even_while_the_operator_is_down(kube, namespace, cluster, operator_factory, driver_rbac):
    op = operator_factory([namespace])
    start_experiment(cluster, "gone", op)
    assert cluster.children("gone") == {"RayCluster": 1, "Job": 1, "ConfigMap": 1}

    body = cluster.get("gone")
    assert not body["metadata"].get("finalizers"), "no finalizer: it would protect nothing"
    annotations = body["metadata"]["annotations"]
    assert "kubetune.io/last-handled-configuration" in annotations
    assert not [k for k in annotations if k.startswith(("kopf.", "kopf/"))], "kopf's bookkeeping is under kubetune.io"

    op.kill()  # down (or uninstalled): deleting does not wait for it
    cluster.delete("gone")
    wait_for(lambda: cluster.get("gone") is None, "the experiment to be gone with the operator down", timeout=10)
    wait_for(lambda: cluster.children("gone") == {"RayCluster": 0, "Job": 0, "ConfigMap": 0},
             "the garbage collector to delete every child", timeout=60)

    # An experiment still carrying the finalizer of an older operator loses it when the operator sees it.
    old = experiment_manifest("legacy")
    old["metadata"]["finalizers"] = ["kubetune.io/finalizer"]
    cluster.create(old)
    op.start()
    wait_for(lambda: not cluster.get("legacy")["metadata"].get("finalizers"), "the old finalizer to be removed", op=op)
    cluster.delete("legacy")
    wait_for(lambda: cluster.get("legacy") is None, "the legacy experiment to be gone", op=op)


def test_children_edited_or_deleted_by_hand_are_repaired_or_recreated(kube, namespace, cluster, operator_factory, driver_rbac):
    op = operator_factory([namespace], KUBETUNE_RESYNC_SECONDS="3")
    job = start_experiment(cluster, "hands", op)
    uid = cluster.get("hands")["metadata"]["uid"]

    # A RayCluster deleted by hand comes back (not ready: Provisioning until KubeRay says so).
    old_rc = cluster.raycluster("hands")["metadata"]["uid"]
    cluster.custom.delete_namespaced_custom_object("ray.io", "v1", namespace, "rayclusters", "hands")
    wait_for(lambda: (cluster.raycluster("hands") or {}).get("metadata", {}).get("uid") not in (None, old_rc),
             "the RayCluster to be recreated", op=op)
    cluster.wait_phase("hands", "Provisioning", op=op)
    cluster.mark_raycluster("hands")
    cluster.wait_phase("hands", "Running", op=op)

    # Labels and owner reference edited away: put back; a scaled worker group (the autoscaler's business) stays.
    cluster.custom.patch_namespaced_custom_object("ray.io", "v1", namespace, "rayclusters", "hands", [
        {"op": "remove", "path": "/metadata/labels/kubetune.io~1experiment"},
        {"op": "remove", "path": "/metadata/ownerReferences"},
        {"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": 3},
    ], _content_type="application/json-patch+json")
    def rc_repaired():
        rc = cluster.raycluster("hands")
        return (rc["metadata"]["labels"].get("kubetune.io/experiment") == "hands"
                and [r["uid"] for r in rc["metadata"].get("ownerReferences", [])] == [uid] and rc)
    rc = wait_for(rc_repaired, "the RayCluster's label and owner to be restored", op=op)
    assert rc["spec"]["workerGroupSpecs"][0]["replicas"] == 3

    # The driver Job with its labels edited away is found by name and relabelled, not duplicated.
    cluster.batch.patch_namespaced_job(job, namespace, [{"op": "remove", "path": "/metadata/labels/kubetune.io~1component"}])
    wait_for(lambda: cluster.batch.read_namespaced_job(job, namespace).metadata.labels.get("kubetune.io/component") == "driver",
             "the Job's label to be restored", op=op)
    # A deleted driver Job is recreated (the new driver resumes from storage), once its pod is gone.
    old_job = cluster.jobs("hands")[0]["metadata"]["uid"]
    cluster.batch.delete_namespaced_job(job, namespace, propagation_policy="Foreground")
    wait_for(lambda: [j["metadata"]["uid"] for j in cluster.jobs("hands")] not in ([], [old_job]),
             "the driver Job to be recreated", timeout=40, op=op)
    # A deleted ConfigMap comes back at the latest with the next resync.
    cluster.core.delete_namespaced_config_map("hands-spec", namespace)
    wait_for(lambda: len(cluster.configmaps("hands")) == 1, "the ConfigMap to be recreated", timeout=20, op=op)
    assert cluster.children("hands") == {"RayCluster": 1, "Job": 1, "ConfigMap": 1}
    assert cluster.status("hands")["phase"] == "Running"


def test_operator_restarted_at_20_points_creates_no_duplicate_and_loses_no_status(kube, namespace, cluster, operator_factory, driver_rbac):
    """SIGKILL the operator 20 times, most of them right after its 1st, 2nd or 3rd API write.

    Three experiments go through their lives meanwhile: the test plays KubeRay and kubelet one step at a
    time whenever the operator has nothing left to do (cluster ready, driver running and reporting
    trials, a driver pod dying and replaced, success), so the kills land all over a reconcile and over
    the experiments' lives. After every kill: no duplicate child, no status lost.
    """
    names = ["restart-a", "restart-b", "restart-c"]
    # Pods that do not start are re-checked rarely here: this test is about writes, and on a busy machine
    # re-checks every second (the tests' default) slow the operator's answers to the world's steps.
    op = operator_factory([namespace], wait=False, KUBETUNE_RECHECK_SECONDS="30", **{FAULT_ENV: "1"})
    for name in names:
        cluster.create(experiment_manifest(name))
    driver_status = {"trials": {"total": 2, "pending": 0, "running": 1, "terminated": 1, "error": 0},
                     "progress": "1/2", "bestTrial": {"id": "t1", "metric": 0.8}}

    def pod_of(name: str, phase: str | None = None) -> str | None:
        jobs = cluster.jobs(name)
        pods = cluster.driver_pods(jobs[0]["metadata"]["name"]) if jobs else []
        pods = [p for p in pods if phase is None or (p.get("status") or {}).get("phase", "Pending") == phase]
        return pods[-1]["metadata"]["name"] if pods else None

    def ready(name):
        if cluster.raycluster(name) is None:
            return False
        cluster.mark_raycluster(name)
        return True

    def running(name, report=True):
        pod = pod_of(name, "Pending")
        if pod is None:
            return False
        kube.set_pod_phase(namespace, pod, "Running")
        if report:
            cluster.patch_status(name, driver_status)  # as the driver does while it runs
        return True

    def dies(name):
        pod = pod_of(name, "Running")
        if pod is None:
            return False
        kube.set_pod_phase(namespace, pod, "Failed", exit_code=1)  # the Job starts another, which resumes
        return True

    def succeeds(name):
        pod = pod_of(name, "Running")
        if pod is None:
            return False
        kube.set_pod_phase(namespace, pod, "Succeeded", exit_code=0)
        return True

    a, b, c = names
    world = [(ready, a), (ready, b), (running, a), (ready, c), (running, b), (dies, a), (running, c),
             (running, a), (succeeds, b), (dies, c), (succeeds, a), (running, c), (succeeds, c)]
    done = 0

    def advance() -> bool:
        """One step of KubeRay/kubelet; False when the next one cannot happen yet (or all are done)."""
        nonlocal done
        if done < len(world) and world[done][0](world[done][1]):
            done += 1
            return True
        return False

    uids: dict[str, set[str]] = defaultdict(set)
    start_times: dict[str, str] = {}
    duplicates, by_fault, by_test = 0, 0, 0
    for i in range(20):
        if i:
            op.start(wait=False, **{FAULT_ENV: str(1 + i % 3)})
        # The windows below count from a live operator: on a busy machine its start alone takes seconds.
        try:
            op.wait_live(timeout=60)
        except AssertionError:
            if op.proc.poll() is None:
                raise  # not live and not dead: a real failure
        try:
            op.proc.wait(timeout=5)
            by_fault += 1
        except subprocess.TimeoutExpired:
            # Nothing left to write: move the world on, which gives the operator work (and a write to die at).
            try:
                if not advance():
                    raise subprocess.TimeoutExpired("advance", 0)
                op.proc.wait(timeout=5)
                by_fault += 1
            except subprocess.TimeoutExpired:
                op.kill()
                by_test += 1
        assert op.proc.returncode == -9, op.tail()
        for name in names:
            counts = cluster.children(name)
            duplicates += sum(max(0, n - 1) for n in counts.values())
            for rc in cluster.rayclusters(name):
                uids[f"{name}/RayCluster"].add(rc["metadata"]["uid"])
            for job in cluster.jobs(name):
                uids[f"{name}/Job"].add(job["metadata"]["uid"])
            for cm in cluster.configmaps(name):
                uids[f"{name}/ConfigMap"].add(cm["metadata"]["uid"])
            status = cluster.status(name)
            if status.get("startTime"):
                assert start_times.setdefault(name, status["startTime"]) == status["startTime"], f"{name}: startTime changed"
            if status.get("trials"):
                assert status["trials"] == driver_status["trials"], f"{name}: the driver's trials were lost"

    op.start(**{FAULT_ENV: ""})  # and now let it finish, playing the rest of the world
    wait_for(lambda: advance() and done == len(world) or done == len(world), "the rest of the world steps",
             timeout=60, op=op)
    for name in names:
        status = cluster.wait_phase(name, "Succeeded", timeout=60, op=op)
        assert status["startTime"] == start_times[name] and status["trials"] == driver_status["trials"]
        wait_for(lambda: cluster.raycluster(name) is None, f"{name}'s RayCluster to be deleted at the end", op=op)
    created = {key: len(found) for key, found in uids.items()}
    print(f"\n[restart test] {by_fault + by_test} operator kills: {by_fault} right after one of its API writes, "
          f"{by_test} while idle; world steps {done}; duplicate children seen: {duplicates}; "
          f"objects per child (1 = never recreated): {sorted(set(created.values()))}")
    assert duplicates == 0
    assert set(created.values()) == {1} and len(created) == 9, f"a child was deleted and created again: {created}"
    assert by_fault >= 12, "most kills should land inside a reconcile"


# ---------------------------------------------------------------- end to end: the driver's real command


def _pod_env(cluster: Cluster, container: dict, overrides: dict[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet would build it: values and resolved secretKeyRefs."""
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in (item.get("valueFrom") or {}):
            ref = item["valueFrom"]["secretKeyRef"]
            try:
                env[item["name"]] = cluster.secret_value(ref["name"], ref["key"])
            except (KeyError, TypeError):
                if not ref.get("optional"):
                    raise
        else:
            raise AssertionError(f"unexpected env entry {item}")
    env.update(overrides)
    return env


def _run_driver_pod(kube, cluster: Cluster, pod: dict, workdir: Path, ray_address: str, kubeconfig: Path) -> int:
    """Play kubelet for one driver pod: its real command and environment as a local process."""
    spec = pod["spec"]
    container = spec["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "spec")
    volume = next(v for v in spec["volumes"] if v["name"] == "spec")
    config_map = cluster.core.read_namespaced_config_map(volume["configMap"]["name"], cluster.ns)
    spec_dir = workdir / "spec"
    spec_dir.mkdir(parents=True, exist_ok=True)
    for key, value in config_map.data.items():
        (spec_dir / key).write_text(value)
    args = [a.replace(mount["mountPath"], str(spec_dir)) for a in container["command"] + container["args"]]
    env = _pod_env(cluster, container, {"RAY_ADDRESS": ray_address})
    env.update({  # what the image and the pod's service account provide
        "PATH": f"{VENV_BIN}{os.pathsep}/usr/bin:/bin", "HOME": str(workdir), "KUBECONFIG": str(kubeconfig),
        "KUBETUNE_DATA_DIR": str(workdir / "data"),
    })
    if os.environ.get("PYTHONPATH"):  # a worktree run (its sources first), as for the operator process
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    if "KUBETUNE_TEST_SESSION" in os.environ:  # conftest's leftover check finds this session's Ray processes by it
        env["KUBETUNE_TEST_SESSION"] = os.environ["KUBETUNE_TEST_SESSION"]
    kube.set_pod_phase(cluster.ns, pod["metadata"]["name"], "Running")
    log = open(workdir / "driver.log", "ab")
    proc = subprocess.Popen(args, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()
    _kill_group(proc.pid, timeout=10)  # the driver's Ray node is in its process group
    kube.set_pod_phase(cluster.ns, pod["metadata"]["name"], "Succeeded" if code == 0 else "Failed", exit_code=code)
    return code


@pytest.mark.ray
def test_end_to_end_quickstart_on_a_local_ray_head_and_s3(kube, namespace, cluster, operator_factory, s3_server, tmp_path):
    import boto3

    t0 = time.monotonic()
    endpoint, creds = s3_server
    bucket = f"kubetune-e2e-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=bucket)
    cluster.core.create_namespaced_secret(namespace, {"metadata": {"name": "s3-credentials"}, "stringData": {
        k: creds[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}})
    kubeconfig = driver_kubeconfig(kube, namespace, tmp_path / "driver.kubeconfig")
    # A namespace that enforces Pod Security `restricted`: the driver pod must pass it as built.
    cluster.core.patch_namespace(namespace, {"metadata": {"labels": RESTRICTED}})

    # The quickstart, smoke-sized (2 trials x 2 iterations), with S3 storage and a small cluster.
    quickstart = REPO_ROOT / "examples" / "quickstart.yaml"
    experiment = load_experiment_file(quickstart)
    document = apply_overrides(yaml.safe_load(quickstart.read_text()), smoke_overrides(experiment) + [
        f"spec.storage.uri=s3://{bucket}/experiments", f"spec.storage.endpoint={endpoint}",
        "spec.storage.secretRef=s3-credentials", "spec.rayCluster.head.cpu=2", "spec.rayCluster.head.memory=4Gi",
    ])
    name = document["metadata"]["name"]
    op = operator_factory(None)  # cluster-wide, as deployed
    cluster.create(document)
    cluster.wait_phase(name, "Provisioning", op=op)

    token = secrets.token_hex(16)
    with local_ray_head(token) as address:
        cluster.create_ray_token_secret(name, token)  # KubeRay's Secret for authOptions.mode=token
        cluster.mark_raycluster(name)
        cluster.wait_phase(name, "Running", op=op)
        job = job_of(cluster, name, op)["metadata"]["name"]
        pod = cluster.wait_driver_pod(job)
        t_driver = time.monotonic()
        code = _run_driver_pod(kube, cluster, pod, tmp_path / "pod", address, kubeconfig)
        driver_s = time.monotonic() - t_driver
        assert code == 0, (tmp_path / "pod" / "driver.log").read_text()[-5000:]
        status = cluster.wait_phase(name, "Succeeded", timeout=60, op=op)
        wait_for(lambda: cluster.raycluster(name) is None, "the RayCluster to be deleted", op=op)

        # ASHA may stop one of them early: that is its own state now (stopped), not "terminated"
        assert status["trials"]["total"] == 2 and status["progress"] == "2/2"
        assert status["trials"]["terminated"] + status["trials"]["stopped"] == 2
        best = status["bestTrial"]
        assert 0 < best["metric"] <= 1 and set(best["config"]) >= {"lr", "momentum"}
        assert status["resultsUri"] == f"s3://{bucket}/experiments/{name}/kubetune-results.json"
        assert cluster.condition(name, "Complete")["status"] == "True"
        row = _table(kube, namespace, name)  # kubectl get tunex: phase, trials done of total, best metric
        assert row["Phase"] == "Succeeded" and row["Trials"] == "2/2"
        assert float(row["Best"]) == pytest.approx(best["metric"])

        # Katib's LongRunning: a raised budget continues the finished experiment from storage.
        t_more = time.monotonic()
        search = cluster.get(name)["spec"]["search"]
        cluster.patch_spec(name, {"search": {**search, "numSamples": 3}})
        cluster.wait_phase(name, "Provisioning", op=op)
        cluster.mark_raycluster(name)
        cluster.wait_phase(name, "Running", op=op)
        new_job = wait_for(lambda: next((j["metadata"]["name"] for j in cluster.jobs(name)
                                         if j["metadata"]["name"] != job), None), "the new driver Job", op=op)
        code = _run_driver_pod(kube, cluster, cluster.wait_driver_pod(new_job), tmp_path / "pod2", address, kubeconfig)
        assert code == 0, (tmp_path / "pod2" / "driver.log").read_text()[-5000:]
        status = cluster.wait_phase(name, "Succeeded", timeout=60, op=op)
        more_s = time.monotonic() - t_more
    wait_for(lambda: cluster.raycluster(name) is None, "the RayCluster to be deleted", op=op)
    assert status["trials"]["total"] == 3 and status["progress"] == "3/3"
    assert status["trials"]["terminated"] + status["trials"]["stopped"] == 3
    assert "resuming" in (tmp_path / "pod2" / "driver.log").read_text()
    assert status["bestTrial"]["metric"] >= best["metric"]
    keys = [o["Key"] for o in boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"]).list_objects_v2(Bucket=bucket)["Contents"]]
    assert f"experiments/{name}/kubetune-results.json" in keys
    # No secret value anywhere but in its Secret.
    visible = json.dumps([cluster.get(name), cluster.configmaps(name), cluster.jobs(name), cluster.events(name)])
    visible += op.log_path.read_text() + (tmp_path / "pod" / "driver.log").read_text()
    assert creds["AWS_SECRET_ACCESS_KEY"] not in visible and token not in visible
    print(f"\n[e2e] quickstart smoke (2 trials x 2 iterations) Succeeded in {time.monotonic() - t0 - more_s:.1f} s "
          f"(driver process {driver_s:.1f} s); numSamples 2 -> 3 continued to Succeeded in {more_s:.1f} s; "
          f"events: {reasons(cluster, name)}")


def _table(kube, namespace: str, name: str) -> dict[str, str]:
    """The row `kubectl get tunex NAME` prints (server-side printing of the CRD's printer columns)."""
    import ssl
    import urllib.request

    req = urllib.request.Request(f"{kube.url}/apis/kubetune.io/v1alpha1/namespaces/{namespace}/tuneexperiments/{name}")
    req.add_header("Authorization", f"Bearer {kube.admin_token}")
    req.add_header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
    with urllib.request.urlopen(req, context=ssl.create_default_context(cafile=str(kube.ca_file))) as resp:
        table = json.loads(resp.read())
    names = [c["name"] for c in table["columnDefinitions"]]
    return {n: str(v) for n, v in zip(names, table["rows"][0]["cells"])}


# ---------------------------------------------------------------- issue #6: refusals, restricted pods, exit codes, big specs, RBAC


def _dry_run_pod(kube, namespace: str, template: dict) -> tuple[int, dict]:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {**template["metadata"], "name": f"probe-{uuid.uuid4().hex[:6]}"},
           "spec": template["spec"]}
    return kube.request("POST", f"/api/v1/namespaces/{namespace}/pods?dryRun=All", pod)


def test_pods_pass_pod_security_restricted_and_a_refused_driver_pod_is_reported_once(kube, namespace, cluster, operator_factory, driver_rbac):
    cluster.core.patch_namespace(namespace, {"metadata": {"labels": RESTRICTED}})
    op = operator_factory([namespace])
    cluster.create(experiment_manifest("strict"))
    cluster.wait_phase("strict", "Provisioning", op=op)
    rc = cluster.raycluster("strict")
    # The pods KubeRay makes from the templates (head, workers) are admitted as they are.
    for template in [rc["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in rc["spec"]["workerGroupSpecs"]]:
        code, answer = _dry_run_pod(kube, namespace, template)
        assert code == 201, answer.get("message")
    cluster.mark_raycluster("strict")
    job = job_of(cluster, "strict", op)["metadata"]["name"]
    pod = cluster.wait_driver_pod(job)  # the real Job controller created it: admitted under `restricted`
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True

    # A driver overlay that breaks `restricted`: the Job controller's FailedCreate reaches the status.
    cluster.create(experiment_manifest("loose", pods={"driver": {"containerSecurityContext": {"allowPrivilegeEscalation": True}}}))
    cluster.wait_phase("loose", "Provisioning", op=op)
    cluster.mark_raycluster("loose")
    wait_for(lambda: cluster.condition("loose", "DriverRunning").get("reason") == "PodCreateFailed",
             "DriverRunning=False, PodCreateFailed", timeout=60, op=op)
    driver = cluster.condition("loose", "DriverRunning")
    assert driver["status"] == "False" and "violates PodSecurity" in driver["message"]
    assert "violates PodSecurity" in cluster.status("loose")["message"]
    time.sleep(3)  # several re-checks (KUBETUNE_RECHECK_SECONDS=1): still one Warning, no traceback
    warnings = [e for e in cluster.events("loose") if e["reason"] == "PodCreateFailed"]
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"
    assert "Traceback" not in op.tail(3000) and op.alive


def test_a_child_the_api_server_refuses_is_a_condition_not_a_traceback_loop(kube, namespace, cluster, operator_factory):
    # A quota of zero RayClusters: the API server answers 403 exceeded quota to the operator's create.
    cluster.core.create_namespaced_resource_quota(namespace, {"metadata": {"name": "no-ray"},
                                                              "spec": {"hard": {"count/rayclusters.ray.io": "0"}}})
    # Its status, as the resource-quota controller (not run here) would write it.
    usage = {"count/rayclusters.ray.io": "0"}
    cluster.core.patch_namespaced_resource_quota_status("no-ray", namespace, {"status": {"hard": usage, "used": usage}})
    op = operator_factory([namespace])
    cluster.create(experiment_manifest("denied"))
    wait_for(lambda: cluster.condition("denied", "RayClusterReady").get("reason") == "CreateRefused",
             "RayClusterReady=False, CreateRefused", op=op)
    ready = cluster.condition("denied", "RayClusterReady")
    assert "exceeded quota" in ready["message"] and "403" in ready["message"]
    time.sleep(3)  # retried with backoff: one Warning, no traceback
    assert [e["type"] for e in cluster.events("denied") if e["reason"] == "CreateRefused"] == ["Warning"]
    assert "Traceback" not in op.tail(3000)
    cluster.core.delete_namespaced_resource_quota("no-ray", namespace)
    wait_for(lambda: cluster.raycluster("denied") is not None, "the RayCluster once the quota is gone", timeout=60, op=op)
    cluster.wait_phase("denied", "Provisioning", op=op)


def test_a_name_too_long_for_the_children_is_refused_with_a_reason(kube, namespace, cluster, operator_factory, driver_rbac):
    op = operator_factory([namespace])
    name = "a-very-long-experiment-name-of-fifty-two-characters"
    assert len(name) == 51
    code, answer = kube.request("POST", f"/apis/kubetune.io/v1alpha1/namespaces/{namespace}/tuneexperiments",
                                experiment_manifest(name))
    if code == 422:  # refused at apply time already (CEL in the CRD): as good, and it names the field
        assert "name" in answer["message"] and "40" in answer["message"]
        return
    assert code == 201, answer
    status = cluster.wait_phase(name, "Failed", op=op)
    valid = cluster.condition(name, "SpecValid")
    assert (valid["status"], valid["reason"]) == ("False", "InvalidName") and "metadata.name" in valid["message"]
    assert "at most 40" in status["message"]
    time.sleep(2)
    assert cluster.children(name) == {"RayCluster": 0, "Job": 0, "ConfigMap": 0}
    assert [e["reason"] for e in cluster.events(name)] == ["InvalidName"] and "Traceback" not in op.tail(2000)


def test_every_trial_failed_fails_at_once_with_the_drivers_reason_and_a_crash_is_retried(kube, namespace, cluster, operator_factory, driver_rbac):
    op = operator_factory([namespace], KUBETUNE_DRIVER_BACKOFF_LIMIT="3")
    job = start_experiment(cluster, "hopeless", op)
    first = cluster.wait_driver_pod(job)["metadata"]["name"]
    kube.set_pod_phase(namespace, first, "Running")
    cluster.terminate_driver_pod(first, 1, "ConnectionError: lost the head")  # a crash: retried
    second = cluster.wait_driver_pod(job, timeout=40, exclude={first})["metadata"]["name"]
    assert cluster.status("hopeless")["phase"] == "Running"
    kube.set_pod_phase(namespace, second, "Running")
    cluster.terminate_driver_pod(second, 3, "all 2 trials failed; first error: ValueError: lr must be positive")
    status = cluster.wait_phase("hopeless", "Failed", timeout=40, op=op)
    driver = cluster.condition("hopeless", "DriverRunning")
    assert driver["reason"] == "AllTrialsFailed" and "PodFailurePolicy" in driver["message"]
    assert "driver said: all 2 trials failed; first error: ValueError: lr must be positive" in driver["message"]
    assert "ValueError" in status["message"]
    time.sleep(2)
    assert len(cluster.driver_pods(job)) == 2, "no retry after exit code 3 (backoffLimit 3 left two)"


def test_a_500_kb_spec_runs_without_a_422_loop(kube, namespace, cluster, operator_factory):
    op = operator_factory([namespace])
    blob = "".join(f"{i:08d}" for i in range(62_500))  # 500,000 characters in trainable.config
    manifest = experiment_manifest("big", trainable={"entrypoint": "kubetune_trials.mnist:train",
                                                     "config": {"dataset": "digits", "blob": blob}})
    cluster.create(manifest)
    cluster.wait_phase("big", "Provisioning", op=op)
    assert json.loads(cluster.configmaps("big")[0]["data"]["spec.json"])["trainable"]["config"]["blob"] == blob
    body = cluster.get("big")
    annotations = body["metadata"].get("annotations") or {}
    assert sum(len(k) + len(v) for k, v in annotations.items()) < 2000, annotations
    cluster.patch_spec("big", {"search": {**body["spec"]["search"], "numSamples": 3}})  # kopf's update handler
    wait_for(lambda: json.loads(cluster.configmaps("big")[0]["data"]["spec.json"])["search"]["numSamples"] == 3,
             "the edit to reach the ConfigMap", op=op)
    log = op.tail(3000)
    assert "422" not in log and "Traceback" not in log and "Unprocessable" not in log, log


def test_editing_the_ray_cluster_leaves_worker_replicas_to_the_user_and_autoscaler(kube, namespace, cluster, operator_factory):
    op = operator_factory([namespace])
    cluster.create(experiment_manifest("scale"))
    cluster.wait_phase("scale", "Provisioning", op=op)
    cluster.custom.patch_namespaced_custom_object("ray.io", "v1", namespace, "rayclusters", "scale", [
        {"op": "replace", "path": "/spec/workerGroupSpecs/0/maxReplicas", "value": 8},
        {"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": 5}], _content_type="application/json-patch+json")
    spec = cluster.get("scale")["spec"]
    ray = spec["rayCluster"]
    ray["head"]["cpu"] = "2"
    ray["workerGroups"][0]["maxReplicas"] = 6
    cluster.patch_spec("scale", {"rayCluster": ray})
    wait_for(lambda: cluster.raycluster("scale")["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
             ["resources"]["limits"]["cpu"] == "2", "the head change to be applied", op=op)
    group = cluster.raycluster("scale")["spec"]["workerGroupSpecs"][0]
    assert (group["replicas"], group["maxReplicas"]) == (5, 6)


def test_a_namespaced_install_with_roles_only_runs_experiments_and_reaches_nothing_else(kube, namespace, cluster, operator_factory, driver_rbac, tmp_path):
    other = kube.create_namespace()
    try:
        kubeconfig = namespaced_operator_kubeconfig(kube, [namespace], tmp_path / "ns-operator.kubeconfig")
        rows = rules_review(kube, kubeconfig, namespace)
        print(f"\n[rbac] namespaced operator in {namespace}: " + "; ".join(
            f"{','.join(r.get('resources') or r.get('urls'))}: {','.join(r['verbs'])}" for r in rows))
        for ns in ("kube-system", other):
            assert not can_i(kube, kubeconfig, "create", "jobs", ns, "batch")
            assert not can_i(kube, kubeconfig, "list", "tuneexperiments", ns, "kubetune.io")
        assert not can_i(kube, kubeconfig, "get", "secrets", namespace)
        op = operator_factory(None, kubeconfig=kubeconfig, KUBETUNE_WATCH_NAMESPACES=namespace)
        cluster.create(experiment_manifest("inside"))
        Cluster(kube, other).create(experiment_manifest("outside"))
        cluster.wait_phase("inside", "Provisioning", op=op)
        cluster.mark_raycluster("inside")
        cluster.wait_phase("inside", "Running", op=op)
        job_of(cluster, "inside", op)
        time.sleep(1)
        assert Cluster(kube, other).status("outside") == {}, "an unwatched namespace is not touched"
        log = op.tail(3000)
        # "403" as a word: the random namespace name may contain the digits (test-c4a9b40307 did)
        assert "Traceback" not in log and not re.search(r"\b403\b", log) and "Forbidden" not in log, log
    finally:
        kube.delete_namespace(other)


def test_users_get_kubetune_edit_and_view_through_the_aggregated_roles(kube, namespace):
    import kubernetes.client

    for doc in user_role_documents():
        _create(kube, doc)
    with kube.api_client() as client:
        rbac = kubernetes.client.RbacAuthorizationV1Api(client)
        authz = kubernetes.client.AuthorizationV1Api(client)
        for role in ("edit", "view"):
            wait_for(lambda: any("tuneexperiments" in (r.resources or []) for r in rbac.read_cluster_role(role).rules),
                     f"the {role} ClusterRole to aggregate kubetune-{role}")
        for user, role in (("alice", "edit"), ("bob", "view")):
            rbac.create_namespaced_role_binding(namespace, {"metadata": {"name": user}, "subjects": [
                {"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}],
                "roleRef": {"kind": "ClusterRole", "name": role, "apiGroup": "rbac.authorization.k8s.io"}})

        def allowed(user, verb):
            review = authz.create_subject_access_review({"spec": {"user": user, "resourceAttributes": {
                "verb": verb, "group": "kubetune.io", "resource": "tuneexperiments", "namespace": namespace}}})
            return review.status.allowed

        assert allowed("alice", "create") and allowed("alice", "delete") and allowed("bob", "list")
        assert not allowed("bob", "create") and not allowed("carol", "list")


def test_the_namespaced_role_has_the_cluster_roles_namespaced_rules():
    cluster_role = next(d for d in rbac_documents() if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "kubetune-operator")
    role = next(d for d in rbac_documents(["default"]) if d["kind"] == "Role")
    namespaced = [r for r in cluster_role["rules"] if r["apiGroups"] != ["apiextensions.k8s.io"]]
    assert role["rules"] == namespaced
    assert not [r for r in cluster_role["rules"] if "secrets" in r["resources"]]


def test_an_infeasible_spec_is_refused_with_a_reason_before_any_child(kube, namespace, cluster, operator_factory):
    op = operator_factory([namespace])
    cluster.create(experiment_manifest("toobig", trialResources={"cpu": 16, "gpu": 1}))
    cluster.wait_phase("toobig", "Failed", op=op)
    valid = cluster.condition("toobig", "SpecValid")
    assert (valid["status"], valid["reason"]) == ("False", "Infeasible") and "spec.trialResources" in valid["message"]
    assert cluster.children("toobig") == {"RayCluster": 0, "Job": 0, "ConfigMap": 0}
    assert [e["reason"] for e in cluster.events("toobig")] == ["Infeasible"]


def test_the_log_has_timestamps_and_no_line_per_experiment_per_resync(kube, namespace, cluster, operator_factory):
    op = operator_factory([namespace], KUBETUNE_RESYNC_SECONDS="1")
    cluster.create(experiment_manifest("quiet"))
    cluster.wait_phase("quiet", "Provisioning", op=op)
    time.sleep(1)
    before = op.log_path.read_text().splitlines()
    time.sleep(4)  # four resyncs of an experiment with nothing to do
    after = op.log_path.read_text().splitlines()
    assert after[len(before):] == [], after[len(before):]
    lines = [line for line in after if line and not line.startswith("=====")]
    assert lines and all(re.match(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\] ", line) for line in lines), lines


def test_service_accounts_and_images_the_operator_does_not_allow_are_refused(kube, namespace, cluster, operator_factory):
    op = operator_factory([namespace], KUBETUNE_ALLOWED_IMAGE_PREFIXES="registry.example.com/ml/")
    cluster.create(experiment_manifest("picky", trainable={"entrypoint": "kubetune_trials.mnist:train",
                                                           "image": "docker.io/someone/trials:1"},
                                       rayCluster={"serviceAccountName": "powerful",
                                                   "head": {"cpu": "1", "memory": "2Gi"}}))
    cluster.create(experiment_manifest("fine", trainable={"entrypoint": "kubetune_trials.mnist:train",
                                                          "image": "registry.example.com/ml/trials:1"}))
    cluster.wait_phase("picky", "Failed", op=op)
    valid = cluster.condition("picky", "SpecValid")
    assert valid["reason"] == "NotAllowed"
    assert "spec.rayCluster.serviceAccountName" in valid["message"] and "spec.trainable.image" in valid["message"]
    assert cluster.children("picky") == {"RayCluster": 0, "Job": 0, "ConfigMap": 0}
    cluster.wait_phase("fine", "Provisioning", op=op)


# ---------------------------------------------------------------- signals


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_operator_stops_on_sigterm_and_sigint_with_their_exit_codes(kube, namespace, operator_factory, signum, code):
    # What Kubernetes sends a pod it deletes or evicts: a graceful stop that says it was stopped, not "done".
    op = operator_factory([namespace])
    started = time.monotonic()
    os.kill(op.proc.pid, signum)
    assert op.proc.wait(15) == code, op.tail()
    assert time.monotonic() - started < 10
    assert "Traceback" not in op.tail(200)
