"""What a trial's actor pays before and after each trial (kubetune.tune.trial_runtime); each check in a fresh
interpreter, so that what it imports is its own."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str) -> str:
    env_path = f"{ROOT / 'src'}:{ROOT / 'trial-image'}:{ROOT}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.ray  # builds the trainable with ray.tune (no Ray is started)
def test_a_new_actor_loads_the_trial_function_without_the_spec_model():
    """Unpickling the trial function (what every new actor does) must not import kubetune.api: the pydantic
    spec model added ~0.4 s to each actor's start (0.45 s measured, more under load)."""
    code = (
        "import cloudpickle, subprocess, sys\n"
        "from kubetune.api import load_experiment\n"
        "from kubetune.tune.trainable import build_trainable\n"
        "doc = {'apiVersion': 'kubetune.io/v1alpha1', 'kind': 'TuneExperiment', 'metadata': {'name': 'x'},\n"
        "       'spec': {'trainable': {'entrypoint': 'kubetune_trials.sleep:train'},\n"
        "                'objective': {'metric': 'score', 'mode': 'max'},\n"
        "                'parameters': {'x': {'uniform': {'min': 0, 'max': 1}}}}}\n"
        "data = cloudpickle.dumps(build_trainable(load_experiment(doc).spec))\n"
        "child = 'import pickle, sys; pickle.loads(sys.stdin.buffer.read()); '"
        " 'print(sorted(m for m in sys.modules if m.startswith(\"kubetune.api\")))'\n"
        "out = subprocess.run([sys.executable, '-c', child], input=data, capture_output=True, check=True)\n"
        "print(out.stdout.decode().strip())\n"
    )
    assert run_python(code) == "[]"


def test_a_trial_that_leaves_torch_alone_does_not_pay_for_restoring_it():
    """Restoring torch's switches after a trial calls only what the trial changed: the first
    use_deterministic_algorithms() call imports torch._dynamo and ~900 modules (1.7 s)."""
    code = (
        "import sys, torch\n"
        "from kubetune.tune.trial_runtime import isolated\n"
        "torch.set_num_threads(2)\n"
        "with isolated('user_code'):\n"
        "    torch.set_num_threads(1)\n"
        "print(torch.get_num_threads() == 2, 'torch._dynamo' in sys.modules)\n"
    )
    assert run_python(code) == "True False"
    changed = (
        "import sys, torch\n"
        "from kubetune.tune.trial_runtime import isolated\n"
        "before = torch.are_deterministic_algorithms_enabled()\n"
        "with isolated('user_code'):\n"
        "    torch.use_deterministic_algorithms(True)\n"
        "print(torch.are_deterministic_algorithms_enabled() == before)\n"
    )
    assert run_python(changed) == "True"
