"""SIGINT and SIGTERM, sent to the `kubetune run` process alone (as `kill` and `timeout` do) or from a
terminal: trials stop, the experiment and its results are saved (interrupted), the exit code is 130 /
143 well inside a pod's 30 s grace period, and the same command resumes (issue #9, point 3)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[1]

# Stopping must finish well inside Kubernetes' default 30 s termination grace period.
STOP_BOUND_S = 25


def _spec(name, entrypoint, config, samples=4):
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "TuneExperiment", "metadata": {"name": name},
            "spec": {"trainable": {"entrypoint": entrypoint, "config": config},
                     "objective": {"metric": "score", "mode": "max"},
                     "parameters": {"x": {"uniform": {"min": 0, "max": 1}}},
                     "search": {"numSamples": samples, "seed": 1}}}


def _start(tmp_path, spec, store):
    path = tmp_path / f"{spec['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return subprocess.Popen(
        [sys.executable, "-m", "kubetune", "run", str(path), "--storage", str(store), "--num-cpus", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    ), path


def _read_until(proc, predicate, lines, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if predicate(line):
            return
    raise AssertionError("".join(lines))


def _stop(proc, sig, lines):
    """Send `sig` to the process alone; its output and exit code, within the bound."""
    proc.send_signal(sig)
    try:
        rest, _ = proc.communicate(timeout=STOP_BOUND_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"{sig.name} did not stop the run in {STOP_BOUND_S} s:\n{''.join(lines)}")
    return "".join(lines) + rest


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_to_the_process_saves_interrupted_results_and_resumes(tmp_path, sig, code):
    name = f"sig-{sig.name.lower()}"
    spec = _spec(name, "kubetune_trials.sleep:train", {"iterations": 4000, "sleep_s": 0.05})
    proc, path = _start(tmp_path, spec, tmp_path / "store")
    lines: list[str] = []
    _read_until(proc, lambda line: "best score=" in line, lines)  # a trial has reported
    out = _stop(proc, sig, lines)
    assert proc.returncode == code, out
    assert f"interrupted by {sig.name}" in out and "run the same command again to resume" in out
    assert "Traceback" not in out and "Tuner.restore" not in out and "RpcError" not in out, out

    results = json.loads((tmp_path / "store" / name / "kubetune-results.json").read_text())
    assert results["status"] == "interrupted" and results["interrupted"] == sig.name
    states = {t["state"] for t in results["trials"]}
    assert "terminated" not in states, results["trials"]  # 4000 iterations: none can have finished
    assert results["counts"]["interrupted"] >= 1
    assert states <= {"interrupted", "pending"}
    reported = [t for t in results["trials"] if t["state"] == "interrupted"]
    assert all(t["iteration"] >= 1 for t in reported)

    # The same command resumes the interrupted trials from their checkpoints; stop.maxIterations: 1 (a
    # stopper replaced on resume) ends each one at its next result, so the test need not wait for 4000.
    spec["spec"]["stop"] = {"maxIterations": 1}
    path.write_text(yaml.safe_dump(spec))
    again = subprocess.run([sys.executable, "-m", "kubetune", "run", str(path), "--storage", str(tmp_path / "store"),
                            "--num-cpus", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "Resuming experiment" in again.stdout, again.stdout + again.stderr
    assert again.returncode == 0, again.stdout + again.stderr
    after = json.loads((tmp_path / "store" / name / "kubetune-results.json").read_text())
    assert after["interrupted"] is None and after["counts"]["terminated"] == 4
    before = {t["id"]: t["iteration"] for t in reported}
    for t in after["trials"]:
        if t["id"] in before:  # continued from its last checkpoint (at most one iteration back), not started over
            assert t["iteration"] >= before[t["id"]], (t, before)


def test_ctrl_c_before_any_trial_reports_exits_130_not_a_metric_error(tmp_path):
    spec = _spec("early", "tests.trainables:slow_start", {"wait_s": 300}, samples=2)
    proc, _ = _start(tmp_path, spec, tmp_path / "store")
    lines: list[str] = []
    _read_until(proc, lambda line: "running" in line and "best: none yet" in line and " 0 running" not in line, lines)
    out = _stop(proc, signal.SIGINT, lines)
    assert proc.returncode == 130, out
    assert "no trial reported" not in out and "interrupted by SIGINT" in out
    assert "Tuner.restore" not in out and "Traceback" not in out
    results = json.loads((tmp_path / "store" / "early" / "kubetune-results.json").read_text())
    assert results["status"] == "interrupted" and results["bestTrial"] is None
    assert {t["state"] for t in results["trials"]} <= {"interrupted", "pending"}


def test_signal_to_the_whole_process_group_as_a_terminal_sends_it(tmp_path):
    spec = _spec("group", "kubetune_trials.sleep:train", {"iterations": 4000, "sleep_s": 0.05}, samples=2)
    proc, _ = _start(tmp_path, spec, tmp_path / "store")
    lines: list[str] = []
    _read_until(proc, lambda line: "best score=" in line, lines)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=STOP_BOUND_S)
    out = "".join(lines) + out
    assert proc.returncode == 130, out
    results = json.loads((tmp_path / "store" / "group" / "kubetune-results.json").read_text())
    assert results["status"] == "interrupted" and "terminated" not in {t["state"] for t in results["trials"]}
