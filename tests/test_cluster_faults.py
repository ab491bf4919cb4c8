"""Faults while trials run on the real single-node cluster (tests/cluster.py): the driver pod, the
Ray head pod, a worker pod or the operator pod is deleted; the experiment still ends `Succeeded`, no
trial is created twice, and no trial that had finished runs again (a trial restarts from its last
checkpoint only if it was running when the fault hit)."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest

from tests.cluster import CLUSTER_MARKS
from tests.cluster_flow import (EXPERIMENTS_NS, RELEASE_NS, create_s3_secret, experiment_doc, result_rows,
                                run_on_cluster)

pytestmark = CLUSTER_MARKS

# Which pods each fault deletes (a label selector, in its namespace).
FAULTS = {
    "driver": (EXPERIMENTS_NS, "kubetune.io/component=driver"),
    "head": (EXPERIMENTS_NS, "ray.io/node-type=head"),
    "worker": (EXPERIMENTS_NS, "ray.io/node-type=worker"),
    "operator": (RELEASE_NS, "app.kubernetes.io/name=kubetune"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_experiment_survives_pod_deletion_while_trials_run(node_cluster, kubetune_installed, pod_s3, fault):
    endpoint, client, _ = pod_s3
    create_s3_secret(node_cluster)
    name = f"fault-{fault}-{uuid.uuid4().hex[:4]}"
    # Trials of a few seconds each (2 at a time): the fault lands while some are done, some run.
    doc = experiment_doc("sleep-asha.yaml", name, endpoint, name)
    doc["spec"]["trainable"]["config"] = {"iterations": 20, "sleep_s": 0.5}
    doc["spec"]["search"]["numSamples"] = 8
    doc["spec"]["scheduler"] = {"type": "fifo"}  # every trial runs its 10 s: the fault lands mid-run
    namespace, selector = FAULTS[fault]

    def inject(status, seen):
        trials = status.get("trials") or {}
        if "fault_at" in seen or trials.get("terminated", 0) + trials.get("stopped", 0) < 2 \
                or trials.get("pending", 0) < 2:
            return
        seen["fault_at"] = dict(status.get("trials") or {})
        seen["fault_t"] = time.monotonic()
        out = node_cluster.kubectl("delete", "pod", "-n", namespace, "-l", selector,
                              "--wait=false", check=False)
        seen["fault_out"] = out.stdout + out.stderr
        seen["after_fault"] = []

    def record(status, seen):
        inject(status, seen)
        if "after_fault" in seen:
            conds = [(c.get("type"), c.get("reason"), c.get("message", "")[:100]) for c in status.get("conditions", [])
                     if c.get("status") == "False" or c.get("type") in ("DriverRunning", "RayClusterReady")]
            if not seen["after_fault"] or seen["after_fault"][-1] != conds:
                seen["after_fault"].append(conds)

    seen = run_on_cluster(node_cluster, doc, while_running=record)
    status = seen["status"]
    assert "fault_at" in seen, f"the experiment finished before the fault: {seen['phases']}"
    assert seen["fault_at"].get("pending", 0) >= 2, seen["fault_at"]  # trials were still to come
    assert "deleted" in seen["fault_out"], seen["fault_out"]
    assert status["phase"] == "Succeeded", (seen["phases"], status)
    assert status["trials"]["total"] == 8 and status["trials"].get("error", 0) == 0, status["trials"]

    if fault in ("worker", "operator"):  # the driver ran on throughout: the status must not say otherwise
        said = [c for conds in seen["after_fault"] for c in conds if c[0] == "DriverRunning"]
        assert all(reason == "DriverRunning" for _, reason, _ in said), said
    rows_by_trial, _ = result_rows(client, name + "/")
    assert len(rows_by_trial) == 8, sorted(rows_by_trial)  # no trial created twice
    # A trial that had finished never runs again; one running at the fault may repeat the iterations
    # after its last checkpoint (2 run at a time).
    repeated = {t: [i for i, n in Counter(r["training_iteration"] for r in rows).items() if n > 1]
                for t, rows in rows_by_trial.items()}
    repeated = {t: its for t, its in repeated.items() if its}
    assert len(repeated) <= 2, repeated
    print(f"\n[cluster] fault {fault}: pods deleted at trials {seen['fault_at']}, Succeeded "
          f"{seen['done_s'] - (seen['fault_t'] - seen['t0']):.0f}s after it; "
          f"trials with repeated iterations {repeated}; status after the fault {seen['after_fault'][:6]}; "
          f"phases {seen['phases']}")
