"""Every example validates and runs locally with --smoke; the quickstart runs in full and learns."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune.api import load_experiment_file
from kubetune.api.smoke import smoke_overrides
from kubetune.tune.driver import run_experiment

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
KUBETUNE = str(Path(sys.executable).parent / "kubetune")

pytestmark = pytest.mark.ray


def test_examples_exist():
    names = {p.stem for p in EXAMPLES}
    assert {"quickstart", "cifar10-asha", "lightning-mnist-asha", "lightning-mnist-pbt", "mnist-hyperopt-asha",
            "ddp-torchtrainer", "resnet18-fashionmnist-bayesopt"} <= names, names


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_validates_with_its_entrypoint(path):
    result = subprocess.run([KUBETUNE, "validate", "--check-entrypoint", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_smoke_runs(ray_local, tmp_path, path):
    experiment = load_experiment_file(path)
    smoke = load_experiment_file(path, smoke_overrides(experiment))
    outcome = run_experiment(smoke, storage_override=str(tmp_path))
    assert outcome.status == "succeeded", outcome.message
    counts = outcome.snapshot.counts
    assert counts["error"] == 0 and counts["terminated"] >= 1
    assert outcome.best is not None and outcome.best.metric is not None
    saved = json.loads((tmp_path / smoke.metadata.name / "kubetune-results.json").read_text())
    assert saved["bestTrial"]["id"] == outcome.best.id


def test_quickstart_learns_and_resumes(ray_local, tmp_path):
    """The README's first command, in full: best validation accuracy above 0.9; a second run resumes."""
    experiment = load_experiment_file(ROOT / "examples" / "quickstart.yaml")
    assert experiment.spec.search.num_samples >= 8 and experiment.spec.scheduler.type == "asha"
    outcome = run_experiment(experiment, storage_override=str(tmp_path))
    assert outcome.status == "succeeded", outcome.message
    assert outcome.best.metric > 0.9, outcome.best
    assert outcome.best.checkpoint and Path(outcome.best.checkpoint).exists()
    again = run_experiment(experiment, storage_override=str(tmp_path))
    assert again.restored and again.status == "succeeded"
    assert again.best.id == outcome.best.id and again.best.metric == outcome.best.metric
