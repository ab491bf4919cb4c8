"""What each example asks of a Kubernetes cluster (issue #10 point 5): its comments say it, true to
its spec and the operator's driver defaults, and the quickstart and sleep examples fit a small node."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kubetune.api.feasibility import infeasible, nodes_from_spec
from kubetune.api.load import load_experiment_file
from kubetune.api.spec import quantity_to_bytes
from kubetune.controller.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
SAYS = re.compile(r"^# On Kubernetes: requests ([\d.]+) CPU, ([\d.]+) GiB(?:, (\d+) GPU)?", re.M)
# A kind- or laptop-sized node: 2 allocatable CPUs (CoreDNS takes 100m of them), ~6 GiB for the experiment.
SMALL_NODE_CPU, SMALL_NODE_GIB = 2 - 0.1, 6.0


def cpus(quantity) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def requests(path: Path) -> tuple[float, float, int]:
    """CPU, GiB and GPUs the experiment's pods request when it starts: head, workers, driver."""
    spec = load_experiment_file(path).spec
    settings = Settings()
    rc = spec.ray_cluster
    cpu = cpus(rc.head.cpu) + cpus(settings.driver_cpu)
    memory = quantity_to_bytes(rc.head.memory) + quantity_to_bytes(settings.driver_memory)
    gpu = 0
    for group in rc.worker_groups:
        cpu += group.replicas * cpus(group.cpu)
        memory += group.replicas * quantity_to_bytes(group.memory)
        gpu += group.replicas * group.gpu
    return round(cpu, 2), round(memory / 2**30, 2), gpu


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_each_example_says_what_it_needs_on_kubernetes(path):
    said = SAYS.search(path.read_text())
    assert said, f"{path.name}: say what it requests, e.g. '# On Kubernetes: requests 1.5 CPU, 5.5 GiB' (and ', N GPU')"
    claimed = (float(said[1]), float(said[2]), int(said[3] or 0))
    assert claimed == requests(path), f"{path.name}: its comment says {claimed}, its spec requests {requests(path)}"
    spec = load_experiment_file(path).spec
    assert not infeasible(spec, nodes_from_spec(spec)), f"{path.name}: a trial fits none of its Ray nodes"


@pytest.mark.parametrize("name", ["quickstart.yaml", "sleep-asha.yaml"])
def test_the_first_examples_fit_a_two_cpu_node_with_trials_on_a_worker(name):
    path = ROOT / "examples" / name
    cpu, gib, gpu = requests(path)
    assert cpu <= SMALL_NODE_CPU and gib <= SMALL_NODE_GIB and gpu == 0, (cpu, gib, gpu)
    spec = load_experiment_file(path).spec
    (worker,) = spec.ray_cluster.worker_groups
    per_worker = cpus(worker.cpu) // spec.trial_resources.cpu
    assert per_worker >= min(2, spec.search.max_concurrent_trials or 2), "two trials at once on the worker"
