"""The user's flow on the real single-node cluster (tests/cluster.py): `helm install` of
charts/kubetune with the images built from the Dockerfile (the operator runs as a pod under the
chart's RBAC), moto's S3 server on the pod network's bridge, `kubectl apply` of the examples with S3
storage and resources that fit 2 CPUs, to `Succeeded`, trials in Ray worker pods, results in S3, trial
counts and the best trial in `kubectl get tunex` while it runs. Times are printed next to `kubetune run`
of the same experiment on this machine."""

from __future__ import annotations

import uuid

import pytest

from tests.cluster import CLUSTER_MARKS
from tests.cluster_flow import create_s3_secret, experiment_doc, kubetune_run_locally, result_rows, run_on_cluster

pytestmark = CLUSTER_MARKS


@pytest.mark.parametrize("example", ["sleep-asha.yaml", "quickstart.yaml"])
def test_kubectl_apply_example_succeeds_with_trials_in_worker_pods_and_results_in_s3(
        node_cluster, kubetune_installed, pod_s3, example):
    endpoint, client = pod_s3
    create_s3_secret(node_cluster)
    name = example.split(".")[0] + "-" + uuid.uuid4().hex[:4]
    doc = experiment_doc(example, name, endpoint, name)

    seen = run_on_cluster(node_cluster, doc)
    status = seen["status"]
    assert status["phase"] == "Succeeded", (seen["phases"], status)
    trials = status["trials"]
    total = doc["spec"]["search"]["numSamples"]
    assert trials["total"] == total and trials.get("error", 0) == 0, trials
    assert status["bestTrial"]["metric"] is not None
    assert status["bestTrial"]["checkpoint"].startswith(f"s3://results/{name}"), status["bestTrial"]
    # `kubectl get tunex` showed the counts and the best trial while it ran.
    assert seen["get_tunex"], seen["phases"]
    print(f"\n[cluster] kubectl get tunex while running:\n{seen['get_tunex'][0]}")

    rows_by_trial, checkpoints = result_rows(client, name + "/")
    rows = sum(len(r) for r in rows_by_trial.values())
    ips = {row.get("node_ip") for r in rows_by_trial.values() for row in r}
    assert rows >= total and checkpoints > 0, (rows, checkpoints)
    # Every result came from a Ray worker pod (the head has num-cpus 0, the driver no resources).
    assert ips and ips <= seen["worker_ips"], (ips, seen["worker_ips"])

    local_s = kubetune_run_locally(doc)
    print(f"\n[cluster] {example}: kubectl apply → first result {seen['first_result_s']:.1f}s, "
          f"→ Succeeded {seen['done_s']:.1f}s; kubetune run {local_s:.1f}s "
          f"(ratio {seen['done_s'] / local_s:.2f}); {rows} results, {checkpoints} checkpoint files in S3; "
          f"first trial running at {seen.get('first_trial_running_s')}s; phases (s after apply) {seen['phases']}")
