"""Can one trial ever be placed? One check for the operator and for `kubetune run`.

The operator compares a trial with the spec's own worker groups (`nodes_from_spec`); `kubetune run`
and the driver compare it with the live Ray cluster's nodes (build `NodeShape`s from `ray.nodes()`).
Both get the same `FieldIssue`s, naming the field to change and the numbers.

A trial is a list of Ray bundles (`trial_demand`), placed as Tune places them: a plain trial is one
actor, so its one bundle must fit on one node. A DDP trial is a coordinator actor plus a TorchTrainer
whose workers Ray Train places with the PACK strategy, which is soft: each worker must fit on some
node, and all of them together on the cluster (with a node kind counted once per replica).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from kubetune.api.errors import FieldIssue

if TYPE_CHECKING:
    from kubetune.api.spec import TuneExperimentSpec

# A DDP trial's own actor only waits for its TorchTrainer; Ray still needs a non-zero CPU share to
# place it. (The tune layer sizes the actor with this value.)
COORDINATOR_CPU = 0.01

# Ray's resource names.
CPU, GPU, MEMORY = "CPU", "GPU", "memory"


@dataclass(frozen=True)
class NodeShape:
    """One kind of Ray node: a worker group (count = its most replicas), the head, or a live Ray node."""

    name: str
    cpu: float
    gpu: float = 0.0
    memory_bytes: int | None = None
    count: int = 1

    def fits(self, bundle: dict[str, float]) -> bool:
        return (
            bundle.get(CPU, 0) <= self.cpu + 1e-9
            and bundle.get(GPU, 0) <= self.gpu + 1e-9
            and (self.memory_bytes is None or bundle.get(MEMORY, 0) <= self.memory_bytes)
        )

    def describe(self) -> str:
        parts = [f"{_num(self.cpu)} CPU", f"{_num(self.gpu)} GPU"]
        if self.memory_bytes is not None:
            parts.append(f"{_bytes(self.memory_bytes)} memory")
        return ", ".join(parts)


def trial_demand(spec: "TuneExperimentSpec") -> list[dict[str, float]]:
    """Ray bundles of ONE trial: [trial actor] or [coordinator, worker, worker, ...] for DDP."""
    from kubetune.api.spec import quantity_to_bytes

    res = spec.trial_resources
    if spec.distributed is None:
        bundle = {CPU: res.cpu}
        if res.gpu:
            bundle[GPU] = res.gpu
        if res.memory is not None:
            bundle[MEMORY] = float(quantity_to_bytes(res.memory))
        return [bundle]
    d = spec.distributed
    gpus = d.gpus_per_worker if d.gpus_per_worker is not None else res.gpu
    worker = {CPU: res.cpu}
    if gpus:
        worker[GPU] = gpus
    return [{CPU: COORDINATOR_CPU}] + [dict(worker) for _ in range(d.workers)]


def _param_number(params: dict[str, str], key: str) -> float | None:
    try:
        return float(params[key]) if key in params else None
    except ValueError:
        return None  # the model refuses it; nothing to compute with


def nodes_from_spec(spec: "TuneExperimentSpec") -> list[NodeShape]:
    """The Ray nodes the operator's RayCluster offers to trials, as KubeRay starts them.

    KubeRay passes the container's CPU limit (rounded up), GPU count and memory limit to `ray start`
    unless rayStartParams say otherwise (generateRayStartCommand); the operator gives the head
    num-cpus=0 when there are worker groups. Without autoscaling a group has `replicas` nodes.
    """
    from kubetune.api.spec import quantity_to_bytes

    rc = spec.ray_cluster
    nodes = []
    for group in rc.worker_groups:
        params = group.ray_start_params
        cpu = _param_number(params, "num-cpus")
        gpu = _param_number(params, "num-gpus")
        memory = _param_number(params, "memory")
        top = group.max_replicas if group.max_replicas is not None else max(group.replicas, group.min_replicas)
        if not rc.enable_autoscaling:
            top = group.replicas
        nodes.append(NodeShape(
            name=group.name,
            cpu=cpu if cpu is not None else float(math.ceil(_cpu_quantity(group.cpu))),
            # KubeRay counts as Ray GPUs only extended resources whose name ends in "gpu"
            gpu=gpu if gpu is not None else float(group.gpu if group.gpu_resource.endswith("gpu") else 0),
            memory_bytes=int(memory) if memory is not None else quantity_to_bytes(group.memory),
            count=top,
        ))
    params = rc.head.ray_start_params
    head_cpu = _param_number(params, "num-cpus")
    if head_cpu is None:
        head_cpu = 0.0 if rc.worker_groups else float(math.ceil(_cpu_quantity(rc.head.cpu)))
    if head_cpu > 0:
        memory = _param_number(params, "memory")
        nodes.append(NodeShape(
            name="head",
            cpu=head_cpu,
            gpu=_param_number(params, "num-gpus") or 0.0,
            memory_bytes=int(memory) if memory is not None else quantity_to_bytes(rc.head.memory),
        ))
    return nodes


def nodes_from_ray(ray_nodes: Iterable[dict]) -> list[NodeShape]:
    """The live nodes of `ray.nodes()` (alive ones), for `kubetune run` and the driver; no Ray import here."""
    nodes = []
    for node in ray_nodes:
        if not node.get("Alive", True):
            continue
        resources = node.get("Resources") or {}
        memory = resources.get(MEMORY)
        nodes.append(NodeShape(
            name=str(node.get("NodeManagerAddress") or node.get("NodeID", "node"))[:40],
            cpu=float(resources.get(CPU, 0.0)),
            gpu=float(resources.get(GPU, 0.0)),
            memory_bytes=int(memory) if memory is not None else None,
        ))
    return nodes


def _cpu_quantity(value: str | int) -> float:
    from kubetune.api.spec import quantity_to_bytes

    if isinstance(value, str) and value.endswith("m"):
        return int(value[:-1]) / 1000
    return float(quantity_to_bytes(value))


def infeasible(spec: "TuneExperimentSpec", nodes: Iterable[NodeShape], where: str = "worker group") -> list[FieldIssue]:
    """Why one trial can never be placed on `nodes` (empty when it can). Paths are absolute (spec.…).

    `where` names the kind of node in messages: "worker group" for the spec's, "Ray node" for a live cluster.
    """
    nodes = [n for n in nodes if n.count > 0]
    note = ""
    if where == "worker group" and nodes and all(n.name == "head" for n in nodes):
        where, note = "node", " (spec.rayCluster has no workerGroups, so trials run on the head)"
    return [FieldIssue(i.path, i.message + note) for i in _infeasible(spec, nodes, where)]


def _infeasible(spec: "TuneExperimentSpec", nodes: list[NodeShape], where: str) -> list[FieldIssue]:
    bundles = trial_demand(spec)
    field = "spec.distributed.workers" if spec.distributed is not None else "spec.trialResources"
    what = _what(spec, bundles)
    if not nodes:
        return [FieldIssue(field, f"{what}, but there is no {where} with any resources to run it")]

    issues = []
    # Each bundle must fit on one node.
    largest = bundles[-1]
    for resource, label, path in ((GPU, "GPU", "gpu"), (CPU, "CPU", "cpu"), (MEMORY, "memory", "memory")):
        need = largest.get(resource, 0)
        if not need:
            continue
        have = [_have(n, resource) for n in nodes]
        if all(h is not None and need > h + 1e-9 for h in have):
            top = max(nodes, key=lambda n: _have(n, resource) or 0)
            if resource == GPU and not any(n.gpu for n in nodes):
                msg = f"{what}, but no {where} has a GPU"
            else:
                msg = f"{what}, but the largest {where} ({top.name}) has {top.describe()}"
            target = _resource_field(spec, path)
            issues.append(FieldIssue(target, msg))
    if issues:
        return issues
    # A bundle that fits each resource on some node, but not all of them on the same node.
    for bundle in {tuple(sorted(b.items())): b for b in bundles}.values():
        if not any(n.fits(bundle) for n in nodes):
            return [FieldIssue(field, f"{what}, but no {where} has all of {_bundle(bundle)} at once: "
                                      + "; ".join(f"{n.name} has {n.describe()}" for n in nodes))]
    # All bundles of a DDP trial at once, packed first fit onto the cluster's nodes.
    if len(bundles) > 1 and not _packs(bundles, nodes):
        total = {k: sum(b.get(k, 0) for b in bundles) for k in (CPU, GPU)}
        have = ", ".join(f"{n.count} x {n.name} ({n.describe()})" for n in nodes)
        issues.append(FieldIssue(
            "spec.distributed.workers",
            f"{what} ({_num(total[CPU])} CPU, {_num(total[GPU])} GPU in all), more than the {where}s hold together: {have}",
        ))
    return issues


def _resource_field(spec: "TuneExperimentSpec", path: str) -> str:
    if path == "gpu" and spec.distributed is not None and spec.distributed.gpus_per_worker is not None:
        return "spec.distributed.gpusPerWorker"
    return f"spec.trialResources.{path}"


def _have(node: NodeShape, resource: str) -> float | None:
    return {CPU: node.cpu, GPU: node.gpu, MEMORY: node.memory_bytes}[resource]


def _packs(bundles: list[dict[str, float]], nodes: list[NodeShape]) -> bool:
    """First-fit decreasing over every node instance (exact enough for identical worker bundles)."""
    free = [{CPU: n.cpu, GPU: n.gpu, MEMORY: n.memory_bytes if n.memory_bytes is not None else math.inf}
            for n in nodes for _ in range(n.count)]
    for bundle in sorted(bundles, key=lambda b: (b.get(GPU, 0), b.get(CPU, 0)), reverse=True):
        for slot in free:
            if all(bundle.get(k, 0) <= slot[k] + 1e-9 for k in (CPU, GPU, MEMORY)):
                for k in (CPU, GPU, MEMORY):
                    slot[k] -= bundle.get(k, 0)
                break
        else:
            return False
    return True


def _what(spec: "TuneExperimentSpec", bundles: list[dict[str, float]]) -> str:
    if spec.distributed is None:
        return f"one trial needs {_bundle(bundles[0])}"
    return f"one trial needs {spec.distributed.workers} worker(s) of {_bundle(bundles[-1])}"


def _bundle(bundle: dict[str, float]) -> str:
    parts = [f"{_num(bundle.get(CPU, 0))} CPU"]
    if bundle.get(GPU):
        parts.append(f"{_num(bundle[GPU])} GPU")
    if bundle.get(MEMORY):
        parts.append(f"{_bytes(int(bundle[MEMORY]))} memory")
    return " + ".join(parts)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _bytes(value: int) -> str:
    for unit, size in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if value >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value}B"
