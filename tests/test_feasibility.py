"""Feasibility: what one trial needs against what the cluster offers, and model checks of #6 point 4."""

import pytest

from kubetune.api import SpecError, load_experiment
from kubetune.api.feasibility import COORDINATOR_CPU, NodeShape, infeasible, nodes_from_ray, nodes_from_spec, trial_demand
from kubetune.api.spec import TuneExperimentSpec
from tests.test_spec import experiment


def spec(**changes) -> TuneExperimentSpec:
    return load_experiment(experiment(**changes)).spec


def found(issues):
    return {i.path: i.message for i in issues}


def test_demand_of_a_plain_and_a_ddp_trial():
    assert trial_demand(spec(trialResources={"cpu": 2, "gpu": 0.5, "memory": "1Gi"})) == [
        {"CPU": 2.0, "GPU": 0.5, "memory": float(2**30)}]
    ddp = trial_demand(spec(trialResources={"cpu": 1}, distributed={"workers": 3, "gpusPerWorker": 1}))
    assert ddp == [{"CPU": COORDINATOR_CPU}] + [{"CPU": 1.0, "GPU": 1}] * 3


def test_nodes_from_worker_groups_and_head():
    s = spec(rayCluster={"head": {"cpu": "2"}, "workerGroups": [
        {"name": "gpu", "replicas": 2, "cpu": "8", "memory": "32Gi", "gpu": 1},
        {"name": "small", "replicas": 1, "cpu": "500m", "rayStartParams": {"num-gpus": "0"}},
    ]})
    nodes = nodes_from_spec(s)
    assert nodes == [NodeShape("gpu", 8.0, 1.0, 32 * 2**30, 2), NodeShape("small", 1.0, 0.0, 16 * 2**30, 1)]
    # no worker groups: the head runs trials; rayStartParams win over the container's size
    assert nodes_from_spec(spec()) == [NodeShape("head", 2.0, 0.0, 8 * 2**30)]
    s = spec(rayCluster={"head": {"rayStartParams": {"num-cpus": "3"}}, "workerGroups": [{"name": "w", "rayStartParams": {"num-cpus": "6"}}]})
    assert [(n.name, n.cpu) for n in nodes_from_spec(s)] == [("w", 6.0), ("head", 3.0)]


def test_issue_6_trial_larger_than_every_worker_group():
    s = spec(trialResources={"cpu": 16, "gpu": 1}, rayCluster={"workerGroups": [{"name": "gpu", "cpu": "4", "gpu": 0}]})
    issues = found(infeasible(s, nodes_from_spec(s)))
    assert issues["spec.trialResources.gpu"] == "one trial needs 16 CPU + 1 GPU, but no worker group has a GPU"
    assert issues["spec.trialResources.cpu"] == (
        "one trial needs 16 CPU + 1 GPU, but the largest worker group (gpu) has 4 CPU, 0 GPU, 16Gi memory")


def test_feasible_trials_give_no_issue():
    s = spec(trialResources={"cpu": 4, "gpu": 0.25}, rayCluster={"workerGroups": [{"name": "gpu", "cpu": "8", "gpu": 1}]})
    assert infeasible(s, nodes_from_spec(s)) == []
    s = spec(trialResources={"cpu": 1}, distributed={"workers": 4, "gpusPerWorker": 1},
             rayCluster={"workerGroups": [{"name": "gpu", "replicas": 2, "cpu": "4", "gpu": 2}]})
    assert infeasible(s, nodes_from_spec(s)) == []


def test_memory_larger_than_every_node():
    s = spec(trialResources={"memory": "64Gi"}, rayCluster={"workerGroups": [{"name": "w", "memory": "16Gi"}]})
    assert "the largest worker group (w) has 4 CPU, 0 GPU, 16Gi memory" in found(infeasible(s, nodes_from_spec(s)))["spec.trialResources.memory"]


def test_issue_9_ddp_workers_that_never_fit_together():
    # 4 DDP workers x 0.5 CPU on a 2-CPU machine: each fits, together with the coordinator they do not
    s = spec(trialResources={"cpu": 0.5}, distributed={"workers": 4, "gpusPerWorker": 0})
    message = found(infeasible(s, [NodeShape("local", cpu=2.0)], where="Ray node"))["spec.distributed.workers"]
    assert message.startswith("one trial needs 4 worker(s) of 0.5 CPU (2.01 CPU, 0 GPU in all), more than the Ray nodes hold")
    # the same trial on 2 such nodes fits
    assert infeasible(s, [NodeShape("local", cpu=2.0, count=2)]) == []


def test_ddp_gpu_per_worker_names_its_field():
    s = spec(distributed={"workers": 2, "gpusPerWorker": 2}, rayCluster={"workerGroups": [{"name": "g", "gpu": 1}]})
    assert "the largest worker group (g) has 4 CPU, 1 GPU" in found(infeasible(s, nodes_from_spec(s)))["spec.distributed.gpusPerWorker"]


def test_gpus_on_a_machine_without_any():
    s = spec(trialResources={"gpu": 1})
    assert found(infeasible(s, [NodeShape("local", cpu=8)], where="Ray node")) == {
        "spec.trialResources.gpu": "one trial needs 1 CPU + 1 GPU, but no Ray node has a GPU"}


def test_no_node_combines_the_resources():
    s = spec(trialResources={"cpu": 8, "gpu": 1})
    nodes = [NodeShape("cpu", cpu=16), NodeShape("gpu", cpu=4, gpu=1)]
    assert "no worker group has all of 8 CPU + 1 GPU at once" in found(infeasible(s, nodes))["spec.trialResources"]


def test_groups_without_replicas_offer_nothing():
    s = spec(rayCluster={"workerGroups": [{"name": "w", "replicas": 0}]})
    assert "no worker group with any resources" in found(infeasible(s, nodes_from_spec(s)))["spec.trialResources"]
    # with autoscaling, maxReplicas counts
    s = spec(rayCluster={"enableAutoscaling": True, "workerGroups": [{"name": "w", "replicas": 0, "maxReplicas": 2}]})
    assert infeasible(s, nodes_from_spec(s)) == []


MODEL_CASES = [
    (dict(trainable={"entrypoint": "a.b:c", "image": "UPPER CASE image!!"}), "spec.trainable.image", "image reference"),
    (dict(rayCluster={"image": "repo/x:tag with space"}), "spec.rayCluster.image", "image reference"),
    (dict(rayCluster={"rayVersion": "banana"}), "spec.rayCluster.rayVersion", "Ray version such as 2.60.0"),
    (dict(rayCluster={"head": {"rayStartParams": {"num-cpus": "abc"}}}), "spec.rayCluster.head.rayStartParams.num-cpus", "must be a number of CPUs"),
    (dict(rayCluster={"workerGroups": [{"name": "w", "rayStartParams": {"memory": "8Gi"}}]}), "spec.rayCluster.workerGroups[0].rayStartParams.memory", "whole number of bytes"),
]


@pytest.mark.parametrize("change,path,words", MODEL_CASES, ids=[c[1] for c in MODEL_CASES])
def test_issue_6_model_checks(change, path, words):
    with pytest.raises(SpecError) as info:
        load_experiment(experiment(**change))
    issues = found(info.value.issues)
    assert path in issues, issues
    assert words in issues[path]


@pytest.mark.parametrize("image", [
    "kubetune/trials:0.1", "registry.example.com:5000/team/trials:1.2", "localhost/x",
    "ghcr.io/org/img@sha256:" + "a" * 64, "python:3.11-slim", "my_registry.local/a__b/c-d.e:latest",
])
def test_good_images(image):
    assert spec(trainable={"entrypoint": "a.b:c", "image": image}).trainable.image == image


def test_nodes_from_ray_nodes():
    ray_nodes = [
        {"Alive": True, "NodeManagerAddress": "10.0.0.1", "Resources": {"CPU": 2.0, "memory": 4e9, "node:10.0.0.1": 1.0}},
        {"Alive": False, "NodeManagerAddress": "10.0.0.2", "Resources": {"CPU": 64.0, "GPU": 8.0}},
    ]
    nodes = nodes_from_ray(ray_nodes)
    assert nodes == [NodeShape("10.0.0.1", 2.0, 0.0, 4_000_000_000)]
    s = spec(trialResources={"cpu": 4})
    assert found(infeasible(s, nodes, where="Ray node")) == {
        "spec.trialResources.cpu": "one trial needs 4 CPU, but the largest Ray node (10.0.0.1) has 2 CPU, 0 GPU, 3.73Gi memory"}


def test_every_example_smoke_fits_a_two_cpu_machine(tmp_path):
    """--smoke must never hang on placement (issue #9 point 2): its trials fit the 2-CPU test machine."""
    from pathlib import Path

    import yaml

    from kubetune.api.load import load_experiment_file
    from kubetune.api.smoke import smoke_overrides

    for path in sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml")):
        experiment_ = load_experiment_file(path)
        smoked = load_experiment_file(path, smoke_overrides(experiment_)).spec
        assert infeasible(smoked, [NodeShape("local", cpu=2.0)], where="Ray node") == [], path.name
    # a 4-worker DDP spec is shrunk to 2 workers
    four = tmp_path / "four.yaml"
    four.write_text(yaml.safe_dump(experiment(distributed={"workers": 4})))
    smoked = load_experiment_file(four, smoke_overrides(load_experiment_file(four))).spec
    assert smoked.distributed.workers == 2
    assert infeasible(smoked, [NodeShape("local", cpu=2.0)]) == []


def test_head_only_clusters_say_so():
    s = spec(trialResources={"gpu": 1})
    assert found(infeasible(s, nodes_from_spec(s))) == {"spec.trialResources.gpu": (
        "one trial needs 1 CPU + 1 GPU, but no node has a GPU (spec.rayCluster has no workerGroups, "
        "so trials run on the head)")}


def test_every_example_fits_its_own_ray_cluster():
    """What the operator checks before it starts GPUs: each example runs on the cluster it asks for."""
    from pathlib import Path

    from kubetune.api.load import load_experiment_file

    for path in sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml")):
        s = load_experiment_file(path).spec
        assert infeasible(s, nodes_from_spec(s)) == [], path.name
