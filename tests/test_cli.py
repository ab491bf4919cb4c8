"""The `kubetune` command as a user meets it (issue #9 points 6, 9, 11, 12): --storage validated like
spec.storage.uri, entrypoint checks, missing extras named, plain output off a terminal, quiet logs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubetune.api import exitcodes
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path, entrypoint="kubetune_trials.sleep:train", name="cli", **spec):
    body = {"trainable": {"entrypoint": entrypoint, "config": {"iterations": 2, "sleep_s": 0.01}},
            "objective": {"metric": "score", "mode": "max"},
            "parameters": {"x": {"uniform": {"min": 0, "max": 1}}},
            "search": {"numSamples": 2, "seed": 4}}
    body.update(spec)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "kubetune.io/v1alpha1", "kind": "TuneExperiment",
                                    "metadata": {"name": name}, "spec": body}))
    return path


def kubetune(*args, cwd=None, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "kubetune", *map(str, args)], cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


# ---------------------------------------------------------------- point 6: --storage


def test_storage_with_an_unsupported_scheme_is_refused_like_the_spec_field(tmp_path):
    result = kubetune("run", _write(tmp_path), "--storage", "ftp://host/x", cwd=tmp_path)
    assert result.returncode == exitcodes.BAD_SPEC, result.stderr
    assert "--storage (spec.storage.uri): must be a local path, file:// or s3://" in result.stderr
    assert not (tmp_path / "ftp:").exists()


def test_storage_s3_without_a_bucket_is_a_message_not_a_traceback(tmp_path):
    result = kubetune("run", _write(tmp_path), "--storage", "s3://")
    assert result.returncode == exitcodes.BAD_SPEC, result.stderr
    assert "needs a bucket" in result.stderr and "ArrowInvalid" not in result.stderr and "Traceback" not in result.stderr


def test_storage_endpoint_override_works_with_the_storage_option(tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens: the run gets as far as trying it
    result = kubetune("run", _write(tmp_path), "--storage", "s3://bucket/x", "--set", f"spec.storage.endpoint={endpoint}",
                      env={"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"})
    assert "only used with an s3:// storage.uri" not in result.stderr
    assert result.returncode == exitcodes.CRASHED, result.stderr
    assert f"cannot reach S3 at {endpoint}" in result.stderr


# ---------------------------------------------------------------- point 9: entrypoints


def test_check_entrypoint_refuses_what_cannot_take_the_config(tmp_path):
    result = kubetune("validate", "--check-entrypoint", _write(tmp_path, entrypoint="os:system"))
    assert result.returncode == 1
    assert "spec.trainable.entrypoint: os:system is a builtin_function_or_method, not a Python function" in result.stderr
    two = kubetune("validate", "--check-entrypoint", _write(tmp_path, entrypoint="shutil:copyfile", name="two"))
    assert "shutil:copyfile takes 2 arguments (src, dst)" in two.stderr


def test_plain_validate_says_it_did_not_import_the_entrypoint(tmp_path):
    result = kubetune("validate", _write(tmp_path, entrypoint="no_such_module:train"))
    assert result.returncode == 0, result.stderr
    assert "ok (cli; entrypoint not imported; --check-entrypoint imports it)" in result.stdout
    checked = kubetune("validate", "--check-entrypoint", _write(tmp_path))
    assert "entrypoint kubetune_trials.sleep:train imported, takes the config" in checked.stdout


# ---------------------------------------------------------------- point 11: missing extras, wrong kind


def _without(tmp_path, module):
    """A PYTHONPATH on which `module` cannot be imported, as where its extra is not installed."""
    shadow = tmp_path / "without" / module
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(f"raise ModuleNotFoundError(\"No module named '{module}'\", name='{module}')\n")
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path / "without"), os.environ.get("PYTHONPATH", "")])}


def test_operator_without_its_extra_names_it(tmp_path):
    result = kubetune("operator", env=_without(tmp_path, "kopf"))
    assert "`kubetune operator` needs the 'operator' extra" in result.stderr and "pip install 'kubetune[operator]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_driver_without_ray_names_the_tune_extra(tmp_path):
    result = kubetune("driver", "--spec", _write(tmp_path), env=_without(tmp_path, "ray"))
    assert "`kubetune driver` needs the 'tune' extra" in result.stderr and "Traceback" not in result.stderr


def test_driver_patch_status_needs_no_kubernetes_package_and_says_what_is_missing(tmp_path):
    env = {**_without(tmp_path, "kubernetes"), "KUBECONFIG": str(tmp_path / "none"), "KUBERNETES_SERVICE_HOST": ""}
    result = kubetune("driver", "--spec", _write(tmp_path), "--patch-status", env=env)
    assert result.returncode == exitcodes.CRASHED
    assert "--patch-status: cannot reach the Kubernetes API: not in a pod and no kubeconfig at" in result.stderr
    assert "Traceback" not in result.stderr and "kubernetes" not in result.stderr.replace("Kubernetes", "")


def test_run_on_a_wrong_kind_says_why(tmp_path):
    path = tmp_path / "kind.yaml"
    path.write_text("apiVersion: kubetune.io/v1alpha1\nkind: TuneExperiments\nmetadata: {name: x}\nspec: {}\n")
    result = kubetune("run", path)
    assert result.returncode == exitcodes.BAD_SPEC
    assert "kind: got 'TuneExperiments'; did you mean `TuneExperiment`?" in result.stderr and "found 0" not in result.stderr


# ---------------------------------------------------------------- point 12: plain output, quiet logs, ./dev --help


@pytest.mark.ray
def test_output_to_a_pipe_is_plain_unwrapped_and_free_of_ray_and_optuna_logs(tmp_path):
    store = tmp_path / ("a-long-directory-name-so-that-paths-pass-eighty-columns" * 2)
    path = _write(tmp_path, search={"algorithm": "optuna", "numSamples": 2, "seed": 4})
    result = kubetune("run", path, "--storage", store, "--num-cpus", "2", timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "\x1b[" not in out  # no colour codes
    checkpoint = next(line for line in result.stdout.splitlines() if line.strip().startswith("checkpoint:"))
    assert checkpoint.strip().startswith(f"checkpoint: {store}/cli/train_") and "checkpoint_0000" in checkpoint
    print(result.stdout)
    assert all(len(line) <= 400 for line in result.stdout.splitlines())  # tables fit their content, no padding
    for noise in ("INFO", "WARNING", "[I 20", "optuna", "Tuner.restore", "experiment_analysis"):
        assert noise not in out, (noise, out)


def test_dev_help_prints_the_usage_only():
    result = subprocess.run(["bash", str(ROOT / "dev"), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "set -euo pipefail" not in result.stdout and "./dev test" in result.stdout
