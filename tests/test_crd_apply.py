"""Bad specs are refused at `kubectl apply` by the real kube-apiserver (schema + CEL), good ones accepted.

Prints the table the closing note of #6 needs: each bad spec -> refused at apply / by the operator / accepted.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from kubetune.api import SpecError, load_experiment
from kubetune.api.feasibility import infeasible, nodes_from_spec
from kubetune.api.spec import API_GROUP, API_VERSION, PLURAL
from tests.test_spec import BAD_INPUT, experiment

pytestmark = [pytest.mark.kube]

ROOT = Path(__file__).resolve().parents[1]

# Issue #6, points 1, 2 and 4, as reproduced: (case, change to a valid spec, the path to name).
ISSUE_6 = [
    ("gracePeriod > maxT", dict(scheduler={"type": "asha", "maxT": 3, "gracePeriod": 5}), "spec.scheduler.maxT"),
    ("min > max", dict(parameters={"m": {"uniform": {"min": 0.9, "max": 0.1}}}), "spec.parameters.m.uniform.max"),
    ("two distributions", dict(parameters={"x": {"uniform": {"min": 0, "max": 1}, "choice": [1]}}), "spec.parameters.x"),
    ("cpu: banana", dict(rayCluster={"workerGroups": [{"name": "w", "cpu": "banana"}]}), "spec.rayCluster.workerGroups[0].cpu"),
    ("trial memory: banana", dict(trialResources={"memory": "banana"}), "spec.trialResources.memory"),
    ("pbt without perturbationInterval", dict(scheduler={"type": "pbt", "hyperparamMutations": {"lr": [0.1]}}), "spec.scheduler.perturbationInterval"),
    ("malformed storage endpoint", dict(storage={"uri": "s3://b/p", "endpoint": "minio:9000"}), "spec.storage.endpoint"),
    ("image: UPPER CASE image!!", dict(trainable={"entrypoint": "a.b:c", "image": "UPPER CASE image!!"}), "spec.trainable.image"),
    ("rayVersion: banana", dict(rayCluster={"rayVersion": "banana"}), "spec.rayCluster.rayVersion"),
    ("rayStartParams num-cpus: abc", dict(rayCluster={"workerGroups": [{"name": "w", "rayStartParams": {"num-cpus": "abc"}}]}), "spec.rayCluster.workerGroups[0].rayStartParams"),
    ("duplicate worker groups", dict(rayCluster={"workerGroups": [{"name": "a"}, {"name": "b"}, {"name": "a"}]}), "spec.rayCluster.workerGroups"),
    ("perturbationInterval not on checkpoints", dict(scheduler={"type": "pbt", "perturbationInterval": 3, "hyperparamMutations": {"lr": [0.1]}}, checkpoint={"frequency": 2}), "spec.scheduler.perturbationInterval"),
    ("optuna with qrandn", dict(search={"algorithm": "optuna"}, parameters={"x": {"qrandn": {"q": 1}}}), "spec.parameters"),
]
NAME_41 = "a" * 41

# What the API server cannot refuse, and why (the operator sets SpecValid=False with the reason).
OPERATOR_ONLY = [
    ("16 CPU + 1 GPU trials on 4-CPU, 0-GPU workers", dict(trialResources={"cpu": 16, "gpu": 1}, rayCluster={"workerGroups": [{"name": "gpu", "cpu": "4"}]}),
     "feasibility (api.feasibility) needs KubeRay's view of each group: rayStartParams, autoscaling, DDP packing"),
    ("pbt mutation with grid", dict(scheduler={"type": "pbt", "perturbationInterval": 1, "hyperparamMutations": {"lr": {"grid": [0.1, 0.2]}}}),
     "mutations are untyped in the schema (a distribution or a list)"),
]


# Cases of test_spec.BAD_INPUT that CEL cannot see (rules.py says why for each check).
OPERATOR_ONLY_CASES = {"grid with hyperopt", "bayesopt with choice", "unknown parameter in pointsToEvaluate",
                       "unknown distribution in a mutation"}


def names(path: str, fields: list[str]) -> bool:
    """The API server names `path`, the object holding it (a CEL rule on the parent) or a field in it."""
    def within(inner: str, outer: str) -> bool:
        return inner == outer or inner.startswith(outer + ".") or inner.startswith(outer + "[")

    return any(f != "spec" and (within(path, f) or within(f, path)) for f in fields)


def k8s_path(field: str) -> str:
    """spec.parameters[m].uniform.max -> spec.parameters.m.uniform.max (list indexes stay [0])."""
    return re.sub(r"\[([^\]0-9][^\]]*)\]", r".\1", field)


def create(kube, namespace: str, doc: dict) -> tuple[int, str, list[str]]:
    """Server-side dry-run create with strict field validation, as `kubectl apply` does by default."""
    body = copy.deepcopy(doc)
    body["metadata"].pop("namespace", None)
    path = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/{PLURAL}?dryRun=All&fieldValidation=Strict"
    code, answer = kube.request("POST", path, body)
    causes = (answer.get("details") or {}).get("causes") or []
    return code, answer.get("message", ""), [k8s_path(c.get("field", "")) for c in causes]


def doc_with(change: dict) -> dict:
    doc = experiment()
    for key, value in change.items():
        if value is None:
            doc["spec"].pop(key)
        else:
            doc["spec"][key] = value
    return doc


def operator_refuses(doc: dict) -> str | None:
    try:
        spec = load_experiment(doc).spec
    except SpecError as exc:
        return "; ".join(f"{i.path}: {i.message}" for i in exc.issues)
    issues = infeasible(spec, nodes_from_spec(spec))
    return "; ".join(f"{i.path}: {i.message}" for i in issues) or None


def test_bad_specs_are_refused_at_apply_with_the_field(kube, namespace, capsys):
    table = []
    cases = [(c, change, path) for c, change, path, _ in BAD_INPUT] + ISSUE_6
    failures = []
    for case, change, path in cases:
        code, message, fields = create(kube, namespace, doc_with(change))
        # strict field validation (kubectl's default) refuses unknown fields with a 400 that names them
        named = names(path, fields + [k8s_path(f) for f in re.findall(r"(spec\.\S+?):", message)]) or (
            code == 400 and f'unknown field "{path}"' in message)
        if case in OPERATOR_ONLY_CASES:
            reason = operator_refuses(doc_with(change))
            table.append((case, "refused by the operator" if code == 201 and reason else f"{code}", reason or message))
            if code != 201 or not reason:
                failures.append(f"{case}: expected accepted at apply and refused by the operator; {code} {message}")
            continue
        table.append((case, "refused at apply" if code in (400, 422) else f"accepted ({code})", message))
        if code not in (400, 422) or not named:
            failures.append(f"{case}: {code} {message} (fields {fields}, wanted {path})")
    # a name of 41 characters: refused at apply, not after the RayCluster exists
    doc = experiment()
    doc["metadata"]["name"] = NAME_41
    code, message, _ = create(kube, namespace, doc)
    table.append(("metadata.name of 41 characters", "refused at apply" if code == 422 else f"accepted ({code})", message))
    if code != 422 or "metadata.name: must be at most 40 characters" not in message:
        failures.append(f"name of 41: {code} {message}")
    for case, change, why in OPERATOR_ONLY:
        code, message, _ = create(kube, namespace, doc_with(change))
        reason = operator_refuses(doc_with(change))
        table.append((case, "refused by the operator" if code == 201 and reason else f"{code}", reason or message))
        if code != 201 or not reason:
            failures.append(f"{case}: expected accepted at apply and refused by the operator; {code} {message} {reason}")
    with capsys.disabled():
        print("\n| bad spec | outcome | message |\n| --- | --- | --- |")
        for case, outcome, message in table:
            print(f"| {case} | {outcome} | {message.replace('|', '/')[:300]} |")
    assert not failures, "\n".join(failures)


def test_every_example_is_accepted(kube, namespace):
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "TuneExperiment":
                code, message, _ = create(kube, namespace, doc)
                assert code == 201, f"{path.name}: {code} {message}"


def test_a_good_spec_with_every_section_is_accepted(kube, namespace):
    doc = experiment(
        parameters={"lr": {"loguniform": {"min": 1e-4, "max": 1e-1}}, "bs": {"choice": [32, 64]},
                    "l1": {"powersOfTwo": {"min": 4, "max": 64}}, "n": {"qrandint": {"min": 1, "max": 9, "q": 2}}},
        search={"algorithm": "hyperopt", "numSamples": 20, "pointsToEvaluate": [{"lr": 0.01, "bs": 32}], "randomWarmupSteps": 3},
        scheduler={"type": "asha", "maxT": 10, "gracePeriod": 1, "reductionFactor": 2},
        trialResources={"cpu": 1, "gpu": 0.25, "memory": "2Gi"},
        distributed={"workers": 2, "gpusPerWorker": 1},
        storage={"uri": "s3://bucket/prefix", "endpoint": "http://minio:9000", "secretRef": "s3-credentials"},
        rayCluster={"rayVersion": "2.60.0", "image": "registry.example.com:5000/team/ray:2.60.0",
                    "head": {"cpu": 2, "memory": "8Gi", "rayStartParams": {"num-cpus": "0"}},
                    "workerGroups": [{"name": "gpu", "replicas": 2, "maxReplicas": 4, "cpu": "8", "memory": "32Gi", "gpu": 1,
                                      "rayStartParams": {"num-gpus": "1", "memory": "1000000"}}]},
    )
    code, message, _ = create(kube, namespace, doc)
    assert code == 201, message
    pbt = experiment(scheduler={"type": "pbt", "perturbationInterval": 2, "hyperparamMutations": {"lr": [0.1, 0.2]}},
                     checkpoint={"frequency": 1})
    code, message, _ = create(kube, namespace, pbt)
    assert code == 201, message
    pb2 = experiment(scheduler={"type": "pb2", "perturbationInterval": 2, "hyperparamBounds": {"lr": [0.001, 0.1]}})
    code, message, _ = create(kube, namespace, pb2)
    assert code == 201, message


def test_a_500_kb_spec(kube, namespace, capsys):
    """#6 point 5: what happens to a 500 KB spec at apply (kopf's annotation diffbase holds at most 256 KiB)."""
    values = [f"value-{i:06d}-" + "x" * 40 for i in range(10_000)]  # ~540 KB
    shapes = {
        "a 10,000-value choice list": dict(parameters={"x": {"choice": values}}),
        "10,000 keys in trainable.config": dict(trainable={"entrypoint": "a.b:c", "config": {v[:13]: v for v in values}}),
        "one 500 KB value in trainable.config": dict(trainable={"entrypoint": "a.b:c", "config": {"blob": "".join(values)}}),
    }
    outcomes = {}
    for shape, change in shapes.items():
        doc = doc_with(change)
        size = len(json_bytes(doc))
        assert size > 500_000
        code, message, _ = create(kube, namespace, doc)
        outcomes[shape] = (size, code, message[:200])
        with capsys.disabled():
            print(f"\n{shape}: {size:,} bytes of JSON -> {code} {message[:200]}")
    assert outcomes["a 10,000-value choice list"][1] == 422
    assert "spec.parameters.x.choice" in k8s_path(outcomes["a 10,000-value choice list"][2])
    assert "must have at most 1000 items" in outcomes["a 10,000-value choice list"][2]
    assert outcomes["10,000 keys in trainable.config"][1] == 422
    assert "spec.trainable.config" in outcomes["10,000 keys in trainable.config"][2]
    # An untyped value cannot be measured by the schema or CEL: the API server takes it (its own limit
    # is 3 MiB a request); the operator must not keep the spec in an annotation (see operator/README.md).
    assert outcomes["one 500 KB value in trainable.config"][1] == 201


def json_bytes(doc: dict) -> bytes:
    import json

    return json.dumps(doc).encode()
