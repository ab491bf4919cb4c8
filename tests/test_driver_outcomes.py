"""`kubetune driver` exit codes and its one-line termination message (issue #6 point 6): 2 for a bad
spec, 3 when every trial failed, 143 on SIGTERM (a deleted pod), 0 on success; never 1 for those."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubetune.api import exitcodes

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[1]


def _doc(name, entrypoint, config=None, samples=2):
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "TuneExperiment", "metadata": {"name": name},
            "spec": {"trainable": {"entrypoint": entrypoint, "config": config or {}},
                     "objective": {"metric": "score", "mode": "max"},
                     "parameters": {"x": {"uniform": {"min": 0, "max": 1}}},
                     "search": {"numSamples": samples, "seed": 2}}}


def _driver(tmp_path, document, **popen):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(document) if isinstance(document, dict) else document)
    env = {**__import__("os").environ, "KUBETUNE_TERMINATION_MESSAGE_PATH": str(tmp_path / "termination-log")}
    cmd = [sys.executable, "-m", "kubetune", "driver", "--spec", str(spec), "--namespace", "default"]
    if document and isinstance(document, dict) and "storage" not in document["spec"]:
        document["spec"]["storage"] = {"uri": str(tmp_path / "store")}
        spec.write_text(yaml.safe_dump(document))
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **popen)


def _message(tmp_path):
    text = (tmp_path / "termination-log").read_text()
    assert text.count("\n") == 1, text  # one line
    return text.strip()


def test_bad_spec_exits_2_with_the_reason(tmp_path):
    doc = _doc("bad", "tests.trainables:always_fails")
    doc["spec"]["search"]["numSamples"] = 0
    proc = _driver(tmp_path, doc)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == exitcodes.BAD_SPEC == 2, out
    assert "spec.search.numSamples" in _message(tmp_path)


def test_a_field_this_driver_does_not_know_says_the_trial_image_is_older_than_the_operator(tmp_path):
    """Not ignored (it may change what the search does): exit 2, and the status will say what to do."""
    doc = _doc("newer", "kubetune_trials.sleep:train")
    doc["spec"]["search"]["futureKnob"] = True
    proc = _driver(tmp_path, doc)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == exitcodes.BAD_SPEC, out
    message = _message(tmp_path)
    assert "spec.search.futureKnob: unknown field" in message
    assert "the trial image is older than the operator; upgrade them together" in message
    assert "older than the operator" not in _run_bad_spec_message(tmp_path / "plain")


def _run_bad_spec_message(tmp_path):
    tmp_path.mkdir()
    doc = _doc("bad", "kubetune_trials.sleep:train")
    doc["spec"]["search"]["numSamples"] = 0
    proc = _driver(tmp_path, doc)
    proc.communicate(timeout=120)
    return _message(tmp_path)


def test_unknown_entrypoint_exits_2(tmp_path):
    proc = _driver(tmp_path, _doc("noentry", "tests.no_such_module:train"))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == exitcodes.BAD_SPEC, out
    assert "spec.trainable.entrypoint" in _message(tmp_path)


def test_every_trial_failing_exits_3_and_says_why(tmp_path):
    proc = _driver(tmp_path, _doc("allfail", "tests.trainables:always_fails"))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == exitcodes.ALL_TRIALS_FAILED == 3, out
    message = _message(tmp_path)
    assert message.startswith("failed: all 2 trial(s) failed: RuntimeError: boom from the trainable"), message


def test_success_exits_0(tmp_path):
    proc = _driver(tmp_path, _doc("fine", "kubetune_trials.sleep:train", {"iterations": 2, "sleep_s": 0.01}))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert _message(tmp_path).startswith("succeeded: 2 trial(s) finished")
    last = json.loads(out.strip().splitlines()[-1]) if out.strip().splitlines()[-1].startswith("{") else None
    assert last is None or last["status"] == "succeeded"


def test_sigterm_exits_143_with_results_saved(tmp_path):
    proc = _driver(tmp_path, _doc("evicted", "kubetune_trials.sleep:train", {"iterations": 4000, "sleep_s": 0.05}))
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "starting experiment evicted" in line:
            break
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=25)
    out = "".join(lines) + out
    assert proc.returncode == exitcodes.TERMINATED == 143, out
    assert "RpcError" not in out and "Traceback" not in out, out
    assert "interrupted by SIGTERM" in _message(tmp_path)
    results = json.loads((tmp_path / "store" / "evicted" / "kubetune-results.json").read_text())
    assert results["status"] == "interrupted" and results["interrupted"] == "SIGTERM"
