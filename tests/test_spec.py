"""The spec model: valid documents load, bad input gets messages that name the field."""

from pathlib import Path

import pytest
import yaml

from kubetune.api import SpecError, load_experiment, load_experiment_file
from kubetune.api.spec import Parameter, PowersOfTwo, quantity_to_bytes

ROOT = Path(__file__).resolve().parents[1]


def experiment(**spec_overrides):
    spec = {
        "trainable": {"entrypoint": "kubetune_trials.mnist:train", "config": {"epochs": 3}},
        "objective": {"metric": "mean_accuracy", "mode": "max"},
        "parameters": {"lr": {"loguniform": {"min": 1e-4, "max": 1e-1}}},
    }
    for path, value in spec_overrides.items():
        node = spec
        keys = path.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "TuneExperiment", "metadata": {"name": "exp"}, "spec": spec}


def issues(doc):
    with pytest.raises(SpecError) as info:
        load_experiment(doc)
    return {i.path: i.message for i in info.value.issues}


def test_minimal_document_gets_defaults():
    exp = load_experiment(experiment())
    assert exp.spec.search.algorithm == "random"
    assert exp.spec.scheduler.type == "fifo"
    assert exp.spec.checkpoint.frequency == 1
    assert exp.spec.trial_resources.cpu == 1.0
    assert exp.spec.parameters["lr"].kind == "loguniform"
    # the normalised form is camelCase and round-trips
    dumped = exp.spec.dump()
    assert dumped["trialResources"]["cpu"] == 1.0
    assert load_experiment({**experiment(), "spec": dumped}).spec == exp.spec


def test_design_sketch_is_valid():
    sketch = experiment(
        objective={"metric": "mean_accuracy", "mode": "max", "goal": 0.99},
        parameters={
            "lr": {"loguniform": {"min": 1.0e-4, "max": 1.0e-1}},
            "momentum": {"uniform": {"min": 0.1, "max": 0.9}},
            "batchSize": {"choice": [32, 64, 128]},
        },
        search={"algorithm": "hyperopt", "numSamples": 20, "maxConcurrentTrials": 4, "seed": 7},
        scheduler={"type": "asha", "maxT": 10, "gracePeriod": 1, "reductionFactor": 2},
        stop={"maxIterations": 10, "timeBudgetSeconds": 3600},
        trialResources={"cpu": 1, "gpu": 0.25},
        distributed={"workers": 2, "gpusPerWorker": 1},
        checkpoint={"numToKeep": 2, "frequency": 1},
        failure={"maxRetries": 2},
        storage={"uri": "s3://bucket/prefix", "endpoint": "http://minio:9000", "secretRef": "s3-credentials"},
        rayCluster={"head": {"cpu": 2, "memory": "8Gi"},
                    "workerGroups": [{"name": "gpu", "replicas": 2, "minReplicas": 0, "maxReplicas": 4,
                                      "cpu": 8, "memory": "32Gi", "gpu": 1}]},
        cleanup={"deleteRayClusterOnFinish": True},
        suspend=False,
    )
    exp = load_experiment(sketch)
    assert exp.spec.ray_cluster.worker_groups[0].gpu == 1
    assert exp.spec.storage.is_s3


# Each case: a change to a valid document, the path that must be named, and words the message must contain.
BAD_INPUT = [
    ("unknown field", dict(trainable={"entrypoint": "a.b:c", "entry": 1}), "spec.trainable.entry", "allowed: entrypoint, image, config"),
    ("unknown top-level spec field", dict(paramters={}), "spec.paramters", "did you mean `parameters`? allowed: parameters, "),
    ("wrong type", dict(search={"numSamples": "many"}), "spec.search.numSamples", "integer"),
    ("empty choice list", dict(parameters={"bs": {"choice": []}}), "spec.parameters.bs.choice", "at least one value"),
    ("min above max", dict(parameters={"m": {"uniform": {"min": 0.9, "max": 0.1}}}), "spec.parameters.m.uniform.max", "greater than min"),
    ("int min above max", dict(parameters={"n": {"randint": {"min": 5, "max": 2}}}), "spec.parameters.n.randint.max", "greater than min"),
    ("loguniform non-positive", dict(parameters={"lr": {"loguniform": {"min": 0, "max": 1}}}), "spec.parameters.lr.loguniform.min", "greater than 0"),
    ("two distributions", dict(parameters={"x": {"uniform": {"min": 0, "max": 1}, "choice": [1]}}), "spec.parameters.x", "exactly one"),
    ("no distribution", dict(parameters={"x": {}}), "spec.parameters.x", "exactly one"),
    ("not a power of two", dict(parameters={"l1": {"powersOfTwo": {"min": 4, "max": 100}}}), "spec.parameters.l1.powersOfTwo.max", "power of two"),
    ("GPU fraction above 1", dict(trialResources={"gpu": 1.5}), "spec.trialResources.gpu", "at most 1"),
    ("negative CPU", dict(trialResources={"cpu": 0}), "spec.trialResources.cpu", "greater than 0"),
    ("unknown algorithm", dict(search={"algorithm": "tpe"}), "spec.search.algorithm", "got 'tpe'; did you mean `hyperopt`? allowed: hyperopt, optuna, bayesopt, random, grid"),
    ("unknown scheduler", dict(scheduler={"type": "bohb"}), "spec.scheduler.type", "allowed: pbt, pb2, fifo, asha, hyperband, medianStopping"),
    ("misspelt scheduler", dict(scheduler={"type": "ASHA"}), "spec.scheduler.type", "did you mean `asha`?"),
    ("snake_case field (issue 9 point 7)", dict(search={"num_samples": 3}), "spec.search.num_samples", "did you mean `numSamples`?"),
    ("snake_case section (issue 9 point 7)", dict(trial_resources={"cpu": 1}), "spec.trial_resources", "did you mean `trialResources`?"),
    ("snake_case scheduler option (issue 9 point 7)", dict(scheduler={"type": "asha", "max_t": 3}), "spec.scheduler.max_t", "did you mean `maxT`?"),
    ("unknown distribution (issue 9 point 8)", dict(parameters={"x": {"gaussian": {"mean": 0}}}), "spec.parameters.x.gaussian", "did you mean `randn`? allowed: randn, "),
    ("the CIFAR tutorial's pow2", dict(parameters={"l1": {"pow2": {"min": 4}}}), "spec.parameters.l1.pow2", "did you mean `powersOfTwo`? allowed: powersOfTwo, "),
    ("worker group field", dict(rayCluster={"workerGroups": [{"name": "w", "cpus": 2}]}), "spec.rayCluster.workerGroups[0].cpus", "did you mean `cpu`? allowed: cpu, gpu, "),
    ("unknown distribution in a mutation", dict(scheduler={"type": "pbt", "perturbationInterval": 1, "hyperparamMutations": {"lr": {"gaussian": {}}}}), "spec.scheduler.hyperparamMutations.lr.gaussian", "did you mean `randn`?"),
    ("maxT below gracePeriod", dict(scheduler={"type": "asha", "maxT": 2, "gracePeriod": 5}), "spec.scheduler.maxT", "at least gracePeriod (5)"),
    ("option of another scheduler", dict(scheduler={"type": "asha", "perturbationInterval": 2}), "spec.scheduler.perturbationInterval", "not used by scheduler type asha"),
    ("pbt without mutations", dict(scheduler={"type": "pbt", "perturbationInterval": 2}), "spec.scheduler.hyperparamMutations", "at least one"),
    ("pbt interval not a multiple of checkpoint frequency", dict(scheduler={"type": "pbt", "perturbationInterval": 3, "hyperparamMutations": {"lr": [0.1]}}, checkpoint={"frequency": 2}), "spec.scheduler.perturbationInterval", "multiple of checkpoint.frequency (2)"),
    ("grid with hyperopt", dict(search={"algorithm": "hyperopt"}, parameters={"bs": {"grid": [1, 2]}}), "spec.parameters.bs.grid", "random or grid"),
    ("bayesopt with choice", dict(search={"algorithm": "bayesopt"}, parameters={"bs": {"choice": [1, 2]}}), "spec.parameters.bs.choice", "bayesopt supports only uniform"),
    ("grid search over a continuous range", dict(search={"algorithm": "grid"}), "spec.parameters.lr.loguniform", "discrete"),
    ("unknown parameter in pointsToEvaluate", dict(search={"pointsToEvaluate": [{"lr": 0.01, "lrr": 0.9}]}), "spec.search.pointsToEvaluate[0].lrr", "unknown parameter(s) lrr; did you mean `lr`? allowed: lr"),
    ("warm-up steps for random search", dict(search={"randomWarmupSteps": 5}), "spec.search.randomWarmupSteps", "only used by hyperopt"),
    ("bad entrypoint format", dict(trainable={"entrypoint": "mnist.train"}), "spec.trainable.entrypoint", "package.module:function"),
    ("bad mode", dict(objective={"metric": "acc", "mode": "maximize"}), "spec.objective.mode", "did you mean `max`? allowed: max, min"),
    ("missing objective", dict(objective=None), "spec.objective", "required"),
    ("endpoint without s3", dict(storage={"uri": "/tmp/x", "endpoint": "http://minio:9000"}), "spec.storage.endpoint", "only used with an s3://"),
    ("endpoint not a URL", dict(storage={"uri": "s3://b/p", "endpoint": "minio:9000"}), "spec.storage.endpoint", "http:// or https://"),
    ("unsupported storage scheme", dict(storage={"uri": "gs://bucket/x"}), "spec.storage.uri", "s3://bucket/prefix"),
    ("bad memory quantity", dict(trialResources={"memory": "lots"}), "spec.trialResources.memory", "Kubernetes quantity"),
    ("bad head cpu (shared RayGroup check)", dict(rayCluster={"head": {"cpu": "two"}}), "spec.rayCluster.head.cpu", "Kubernetes quantity"),
    ("bad worker memory (shared RayGroup check)", dict(rayCluster={"workerGroups": [{"name": "w", "memory": "8 GB"}]}), "spec.rayCluster.workerGroups[0].memory", "Kubernetes quantity"),
    ("bad worker group name", dict(rayCluster={"workerGroups": [{"name": "GPU_pool"}]}), "spec.rayCluster.workerGroups[0].name", "DNS label"),
    ("replicas above maxReplicas", dict(rayCluster={"workerGroups": [{"name": "gpu", "replicas": 5, "maxReplicas": 2}]}), "spec.rayCluster.workerGroups[0].replicas", "between minReplicas"),
    ("duplicate worker groups", dict(rayCluster={"workerGroups": [{"name": "a"}, {"name": "a"}]}), "spec.rayCluster.workerGroups", "unique"),
    ("pb2 bounds reversed", dict(scheduler={"type": "pb2", "perturbationInterval": 1, "hyperparamBounds": {"lr": [0.1, 0.01]}}), "spec.scheduler.hyperparamBounds.lr", "min must be below max"),
]


@pytest.mark.parametrize("case,change,path,words", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_names_the_field(case, change, path, words):
    doc = experiment()
    for key, value in change.items():
        if value is None:
            doc["spec"].pop(key)
        else:
            doc["spec"][key] = value
    found = issues(doc)
    assert path in found, f"{case}: expected an error at {path}, got {found}"
    assert words in found[path], f"{case}: {found[path]!r} lacks {words!r}"


def test_at_least_fifteen_kinds_of_bad_input():
    assert len(BAD_INPUT) >= 15


def test_every_error_is_reported_at_once():
    doc = experiment(search={"algorithm": "nope", "numSamples": 0}, trialResources={"gpu": 3.5})
    doc["metadata"]["name"] = "Not_A_Name"
    found = issues(doc)
    assert {"metadata.name", "spec.search.algorithm", "spec.search.numSamples", "spec.trialResources.gpu"} <= set(found)


def test_wrong_kind_and_api_version():
    doc = experiment()
    doc["kind"] = "Experiment"
    doc["apiVersion"] = "kubeflow.org/v1beta1"
    found = issues(doc)
    assert "did you mean `TuneExperiment`?" in found["kind"]
    assert "kubetune.io/v1alpha1" in found["apiVersion"]


def test_file_errors_are_spec_errors(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("spec: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_experiment_file(bad_yaml)
    with pytest.raises(SpecError, match="cannot read file"):
        load_experiment_file(tmp_path / "missing.yaml")


def test_set_overrides(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(experiment()))
    exp = load_experiment_file(path, ["spec.search.numSamples=3", "spec.trainable.config.dataset=digits"])
    assert exp.spec.search.num_samples == 3
    assert exp.spec.trainable.config == {"epochs": 3, "dataset": "digits"}


def test_powers_of_two_and_quantities():
    assert PowersOfTwo(min=4, max=64).values() == [4, 8, 16, 32, 64]
    assert quantity_to_bytes("2Gi") == 2 * 2**30
    assert quantity_to_bytes("500M") == 500_000_000
    assert Parameter.model_validate({"qrandint": {"min": 1, "max": 9, "q": 2}}).kind == "qrandint"


def test_every_example_validates():
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert len(examples) >= 7, examples
    for path in examples:
        exp = load_experiment_file(path)
        assert exp.metadata.name


def test_validate_cli_reports_every_error_and_exits_nonzero(tmp_path, capsys):
    from kubetune.cli import main

    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(experiment()))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(experiment(search={"algorithm": "tpe"}, trialResources={"gpu": 2.5})))
    assert main(["validate", str(good)]) == 0
    assert main(["validate", str(good), str(bad)]) == 1
    err = capsys.readouterr().err
    assert "spec.search.algorithm" in err and "spec.trialResources.gpu" in err
    # an entrypoint that does not import
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump(experiment(trainable={"entrypoint": "no_such_pkg.mod:train"})))
    assert main(["validate", "--check-entrypoint", str(missing)]) == 1
    assert "cannot import module 'no_such_pkg.mod'" in capsys.readouterr().err
