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


def test_each_trial_gets_fresh_user_modules_and_its_environment_back(tmp_path):
    """Isolation between trials on a reused actor: the user's package is imported afresh, libraries stay
    (each trial looks only at the modules it has not classified before), the environment is put back."""
    (tmp_path / "userpkg").mkdir()
    (tmp_path / "userpkg" / "__init__.py").write_text("LOADS = []\n")
    (tmp_path / "userpkg" / "model.py").write_text("import json\nfrom userpkg import LOADS\nLOADS.append(1)\n")
    code = (
        "import os, sys, sysconfig, types\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "from kubetune.tune.trial_runtime import isolated\n"
        "os.environ['KEPT'] = 'before'\n"
        "seen = []\n"
        "for _ in range(3):\n"
        "    with isolated('userpkg'):\n"
        "        import userpkg.model\n"
        "        seen.append(len(userpkg.LOADS))\n"
        "        os.environ['KEPT'] = 'changed'; os.environ['ADDED'] = 'x'; os.environ.pop('PATH')\n"
        "    assert not [m for m in sys.modules if m.split('.')[0] == 'userpkg'], 'user modules left'\n"
        "    assert 'json' in sys.modules\n"
        "    assert (os.environ['KEPT'], 'ADDED' in os.environ, os.environ['PATH']) == ('before', False, '/usr/bin:/bin')\n"
        "# A module kept as a library by an earlier trial is still the user's when it is the trial's package.\n"
        "lib = types.ModuleType('libby'); lib.__file__ = sysconfig.get_paths()['purelib'] + '/libby.py'\n"
        "sys.modules['libby'] = lib\n"
        "with isolated('userpkg'): pass\n"
        "assert sys.modules.get('libby') is lib\n"
        "with isolated('libby'): pass\n"
        "print(seen, 'libby' in sys.modules)\n"
    )
    assert run_python(code) == "[1, 1, 1] False"
