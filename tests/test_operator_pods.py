"""What the operator reads off the pods, on the real kube-apiserver (tests/envtest.py), issue #10.

There is no kubelet and no scheduler here: the tests write pod status through the API (the status
subresource) exactly as they would, which is the contract the operator reads. The Job controller
is the real one (it counts the driver pod as active/ready from that status).
"""

from __future__ import annotations

import datetime

import pytest

from tests.envtest import wait_until
from tests.operator_fixtures import experiment_manifest

pytestmark = [pytest.mark.kube]


def wait_for(predicate, message: str, op, timeout: float = 30):
    try:
        return wait_until(predicate, timeout=timeout, interval=0.2, message=message)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{op.tail()}") from None


def job_of(cluster, name: str, op) -> dict:
    return wait_for(lambda: next(iter(cluster.jobs(name)), None), f"the driver Job of {name}", op)


def reconciled_after(cluster, name: str, generation: int):
    """True once the operator has written conditions for this generation of the spec (or later)."""
    conds = cluster.status(name).get("conditions") or []
    return bool(conds) and all((c.get("observedGeneration") or 0) >= generation for c in conds)


def bump_generation(cluster, name: str) -> int:
    """A spec edit the driver does not read (no new run): proves the next reconcile happened."""
    exp = cluster.get(name)
    keep = not exp["spec"].get("cleanup", {}).get("deleteRayClusterOnFinish", True)
    return cluster.patch_spec(name, {"cleanup": {"deleteRayClusterOnFinish": keep}})["metadata"]["generation"]


def driver_container_running(cluster, pod: str) -> None:
    """The kubelet's status for a driver container that has started, the pod not Ready yet."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    cluster.core.patch_namespaced_pod_status(pod, cluster.ns, {"status": {
        "phase": "Running", "startTime": now,
        "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                       {"type": "ContainersReady", "status": "False", "lastTransitionTime": now},
                       {"type": "Ready", "status": "False", "lastTransitionTime": now}],
        "containerStatuses": [{"name": "driver", "image": "x", "imageID": "", "ready": False, "started": True,
                               "restartCount": 0, "state": {"running": {"startedAt": now}}}]}})


def test_after_an_operator_restart_the_phase_comes_from_the_pods_not_from_memory(kube, namespace, cluster, operator_factory, driver_rbac):
    """Point 4: a driver pod that started while the operator was down, and one that ran on across a
    restart, both read `DriverRunning` from the first reconcile of the new operator."""
    op = operator_factory([namespace])
    cluster.create(experiment_manifest("rerun"))
    cluster.wait_phase("rerun", "Provisioning", op=op)
    cluster.mark_raycluster("rerun")
    job = job_of(cluster, "rerun", op)["metadata"]["name"]
    pod = cluster.wait_driver_pod(job)["metadata"]["name"]
    wait_for(lambda: cluster.condition("rerun", "DriverRunning").get("reason") == "DriverStarting",
             "DriverStarting while the driver pod is pending", op)

    # Down while the driver pod starts: nothing the old operator saw says it runs. The kubelet reports
    # the container running before the pod is Ready, so the Job controller's `ready` count is still 0
    # (as on a cluster that keeps no such count): the pod itself is what says the driver runs.
    op.kill()
    driver_container_running(cluster, pod)
    wait_for(lambda: (cluster.jobs("rerun")[0].get("status") or {}).get("active") == 1, "the Job controller to count it", op)
    assert not (cluster.jobs("rerun")[0].get("status") or {}).get("ready")
    op.start()
    generation = bump_generation(cluster, "rerun")
    wait_for(lambda: reconciled_after(cluster, "rerun", generation), "the restarted operator to reconcile", op)
    driver = cluster.condition("rerun", "DriverRunning")
    assert (driver["status"], driver["reason"]) == ("True", "DriverRunning"), driver
    status = cluster.status("rerun")
    assert status["phase"] == "Running" and "is running" in status["message"], status

    # Restarted again while it runs: the word stays.
    op.kill()
    op.start()
    generation = bump_generation(cluster, "rerun")
    wait_for(lambda: reconciled_after(cluster, "rerun", generation), "the restarted operator to reconcile", op)
    driver = cluster.condition("rerun", "DriverRunning")
    assert (driver["status"], driver["reason"]) == ("True", "DriverRunning"), driver
    assert [e["reason"] for e in cluster.events("rerun")].count("DriverStarting") <= 1


def scheduler_refuses(cluster, pod: str, message: str) -> None:
    """What kube-scheduler writes on a pod no node fits: PodScheduled=False, reason Unschedulable."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    cluster.core.patch_namespaced_pod_status(pod, cluster.ns, {"status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
         "lastTransitionTime": now}]}})


def test_pods_the_scheduler_cannot_place_are_named_in_the_status_with_its_message(kube, namespace, cluster, operator_factory, driver_rbac):
    """Point 5: a driver pod, then a worker pod, `Pending` on `Insufficient cpu`: the conditions and the
    phase's message say which pod waits and why (once a re-check period has passed), one Warning each."""
    op = operator_factory([namespace])  # KUBETUNE_RECHECK_SECONDS=1: reported after 1 s
    cluster.create(experiment_manifest("tight"))
    cluster.wait_phase("tight", "Provisioning", op=op)
    head = cluster.play_kuberay_pod("tight", "head")
    kube.set_pod_phase(namespace, head, "Running")
    cluster.mark_raycluster("tight")
    job = job_of(cluster, "tight", op)["metadata"]["name"]
    driver_pod = cluster.wait_driver_pod(job)["metadata"]["name"]
    insufficient = "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
    scheduler_refuses(cluster, driver_pod, insufficient)
    wait_for(lambda: cluster.condition("tight", "DriverRunning").get("reason") == "PodsNotStarting", "DriverRunning=False, PodsNotStarting", op)
    said = f"driver pod {driver_pod} cannot be scheduled: {insufficient}"
    assert cluster.condition("tight", "DriverRunning")["message"] == said
    assert cluster.status("tight")["message"] == said  # not "driver pod of Job ... is starting"

    worker = cluster.play_kuberay_pod("tight", "worker")
    scheduler_refuses(cluster, worker, insufficient)
    kube.set_pod_phase(namespace, driver_pod, "Running")  # room for the driver after all; not for the worker
    wait_for(lambda: cluster.condition("tight", "RayClusterReady").get("reason") == "PodsNotStarting", "RayClusterReady, PodsNotStarting", op)
    waits = f"worker pod {worker} cannot be scheduled: {insufficient}"
    ready = cluster.condition("tight", "RayClusterReady")
    assert ready["status"] == "True" and ready["message"] == f"RayCluster tight is ready, but {waits}"
    wait_for(lambda: cluster.condition("tight", "DriverRunning").get("status") == "True", "DriverRunning", op)
    status = cluster.status("tight")
    assert status["phase"] == "Running" and status["message"] == f"driver Job {job} is running; {waits}", status

    warnings = [e for e in cluster.events("tight") if e["reason"] == "PodsNotStarting"]
    assert sorted(e["message"] for e in warnings) == sorted([said, f"RayCluster tight is ready, but {waits}"])
    assert all(e["type"] == "Warning" and e.get("count", 1) == 1 for e in warnings)
