"""The driver on a real embedded Ray: isolation of reused actors, failures, storage, resume."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import yaml

from kubetune.api import load_experiment
from kubetune.tune.driver import run_experiment
from kubetune.tune.storage import StorageError

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[1]
KUBETUNE = str(Path(sys.executable).parent / "kubetune")


def doc(name, entrypoint, parameters, **spec):
    body = {"trainable": {"entrypoint": entrypoint, "config": spec.pop("config", {})},
            "objective": {"metric": "score", "mode": "max"}, "parameters": parameters}
    body.update(spec)
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "TuneExperiment", "metadata": {"name": name}, "spec": body}


def test_reused_actors_start_every_trial_clean(ray_local, tmp_path):
    exp = load_experiment(doc("leaky", "tests.trainables:leaky", {"x": {"grid": [1, 2, 3, 4, 5, 6]}},
                              search={"numSamples": 1, "maxConcurrentTrials": 1}))
    outcome = run_experiment(exp, storage_override=str(tmp_path))
    assert outcome.status == "succeeded", outcome.message
    results = [t.last_result for t in outcome.snapshot.trials]
    assert len(results) == 6
    # actors were really reused ...
    assert len({r["pid"] for r in results}) < len(results)
    # ... and no trial saw what an earlier one did to the process
    for r in results:
        assert r["import_count"] == 1 and r["seen_trials"] == 1 and r["leaked_env"] == ""
    assert os.environ.get("KUBETUNE_TEST_LEAK") is None
    saved = json.loads((tmp_path / "leaky" / "kubetune-results.json").read_text())
    assert saved["bestTrial"]["config"] == {"x": 6} and saved["bestTrial"]["metric"] == 7
    assert len(saved["trials"]) == 6 and all(t["state"] == "terminated" for t in saved["trials"])
    # Tune's per-trial logger files on local storage, TensorBoard's through kubetune's bounded-flush logger
    trial_dirs = [d for d in (tmp_path / "leaky").iterdir() if d.is_dir() and d.name.startswith("leaky_")]
    assert len(trial_dirs) == 6
    for trial_dir in trial_dirs:
        names = {f.name.split(".")[0] for f in trial_dir.iterdir()}
        assert {"result", "progress", "events"} <= names, trial_dir


def test_missing_metric_fails_after_the_first_result(ray_local, tmp_path):
    exp = load_experiment(doc("wrong", "tests.trainables:wrong_metric", {"x": {"uniform": {"min": 0, "max": 1}}},
                              search={"numSamples": 6, "maxConcurrentTrials": 1}))
    outcome = run_experiment(exp, storage_override=str(tmp_path))
    assert outcome.status == "failed"
    assert "spec.objective.metric" in outcome.message and "'score'" in outcome.message and "acc" in outcome.message
    # stopped at the first result, not after the budget
    assert max(t.iteration for t in outcome.snapshot.trials) == 1
    assert len([t for t in outcome.snapshot.trials if t.iteration > 0]) == 1


def test_every_trial_failing_fails_the_experiment(ray_local, tmp_path):
    exp = load_experiment(doc("fails", "tests.trainables:always_fails", {"x": {"uniform": {"min": 0, "max": 1}}},
                              search={"numSamples": 2}))
    outcome = run_experiment(exp, storage_override=str(tmp_path))
    assert outcome.status == "failed" and "all 2 trial(s) failed" in outcome.message
    assert outcome.snapshot.counts["error"] == 2 and outcome.exit_code == 3


def test_unreachable_s3_fails_before_any_trial(tmp_path, monkeypatch):
    from tests.conftest import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-shown")
    exp = load_experiment(doc("s3down", "tests.trainables:leaky", {"x": {"grid": [1]}},
                              storage={"uri": "s3://bucket/exp", "endpoint": endpoint}))
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        run_experiment(exp)
    assert endpoint in str(info.value) and "storage.endpoint" in str(info.value)
    assert "never-shown" not in str(info.value)
    assert time.monotonic() - started < 30


def test_missing_bucket_is_named(s3_bucket):
    endpoint, _, _ = s3_bucket
    exp = load_experiment(doc("nobucket", "tests.trainables:leaky", {"x": {"grid": [1]}},
                              storage={"uri": "s3://no-such-bucket/exp", "endpoint": endpoint}))
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        run_experiment(exp)


def test_s3_filesystem_remembers_only_rays_storage_marker(s3_bucket):
    from kubetune.api.spec import Storage
    from kubetune.tune.storage import RAY_STORAGE_MARKER, s3_filesystem

    endpoint, bucket, client = s3_bucket
    fs = s3_filesystem(Storage(uri=f"s3://{bucket}/x", endpoint=endpoint))
    marker, other = f"{bucket}/x/exp/{RAY_STORAGE_MARKER}", f"{bucket}/x/exp/state.json"
    for path in (marker, other):
        with fs.open_output_stream(path):
            pass
    assert [i.type for i in fs.get_file_info([marker, other])] == [pafs.FileType.File] * 2
    client.delete_object(Bucket=bucket, Key=f"x/exp/{RAY_STORAGE_MARKER}")
    client.delete_object(Bucket=bucket, Key="x/exp/state.json")
    # the marker is answered from memory (Ray asks before every checkpoint upload); anything else is asked again
    assert fs.get_file_info(marker).type == pafs.FileType.File
    assert fs.get_file_info(other).type == pafs.FileType.NotFound
    # a copy (Ray ships the filesystem to every trial) starts without the memory
    assert pickle.loads(pickle.dumps(fs)).get_file_info(marker).type == pafs.FileType.NotFound


def test_s3_checkpoints_results_and_restore(ray_local, s3_server, s3_bucket, tmp_path):
    endpoint, bucket, client = s3_bucket
    exp = load_experiment(doc(
        "s3exp", "tests.trainables:counter", {"x": {"grid": [1, 2]}},
        config={"iterations": 3, "sleep_s": 0.01, "marks": str(tmp_path / "marks")},
        search={"numSamples": 1}, checkpoint={"frequency": 1, "numToKeep": 2},
        storage={"uri": f"s3://{bucket}/experiments", "endpoint": endpoint},
    ))
    first = run_experiment(exp)
    assert first.status == "succeeded" and not first.restored
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="experiments/s3exp/")["Contents"]]
    assert "experiments/s3exp/kubetune-results.json" in keys
    assert "experiments/s3exp/kubetune-best-trial.json" in keys
    assert any("/checkpoint_" in k and k.endswith("state.pt") for k in keys), keys
    # no empty "directory" objects: S3 has no directories, and pyarrow's markers were most of the requests
    assert "experiments/s3exp/" not in keys and not [k for k in keys if "/checkpoint_" in k and k.endswith("/")], keys
    best = json.loads(client.get_object(Bucket=bucket, Key="experiments/s3exp/kubetune-best-trial.json")["Body"].read())
    assert best["metric"] == 6 and best["checkpoint"].startswith(f"s3://{bucket}/experiments/s3exp/")
    # the checkpoint the best trial points at is really there
    ckpt_prefix = best["checkpoint"][len(f"s3://{bucket}/"):]
    assert any(k.startswith(ckpt_prefix) for k in keys)

    # Ray pickles the storage filesystem into the experiment state it uploads: no credential may ride along
    _, env = s3_server
    for key in keys:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert env["AWS_SECRET_ACCESS_KEY"].encode() not in body, key
        assert env["AWS_ACCESS_KEY_ID"].encode() not in body, key

    again = run_experiment(exp)
    assert again.restored and again.status == "succeeded"
    assert {t.id for t in again.snapshot.trials} == {t.id for t in first.snapshot.trials}
    # nothing was trained again: each trial started exactly once
    starts = sorted(p.name for p in (tmp_path / "marks").glob("start-*"))
    assert len(starts) == 2, starts


def test_the_driver_reads_no_trial_files_back_after_the_run(ray_local, tmp_path, monkeypatch):
    """Tune's fit() ends by looking for every trial's result.json and progress.csv to build dataframes
    kubetune never uses: four sequential S3 requests a trial after the last one finished."""
    from ray.tune.analysis import experiment_analysis

    looked_up = []
    exists = experiment_analysis._exists_at_fs_path
    monkeypatch.setattr(experiment_analysis, "_exists_at_fs_path", lambda fs, path: looked_up.append(path) or exists(fs, path))
    exp = load_experiment(doc("noreadback", "tests.trainables:counter", {"x": {"grid": [1, 2]}},
                              config={"iterations": 2, "sleep_s": 0.01, "marks": str(tmp_path / "marks")},
                              search={"numSamples": 1}))
    outcome = run_experiment(exp, storage_override=str(tmp_path / "store"))
    assert outcome.status == "succeeded" and outcome.snapshot.counts["terminated"] == 2, outcome.message
    assert looked_up == []
    assert experiment_analysis.ExperimentAnalysis._fetch_trial_dataframes.__name__ == "_fetch_trial_dataframes"


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _kill_group(proc, sig):
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _run_cli(spec_path, storage, env=None):
    return subprocess.Popen(
        [KUBETUNE, "run", str(spec_path), "--storage", str(storage), "--num-cpus", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, env={**os.environ, **(env or {})},
    )


def _counter_experiment(tmp_path, name, samples=6):
    spec = doc(name, "tests.trainables:counter", {"x": {"uniform": {"min": 0, "max": 1}}},
               config={"iterations": 5, "sleep_s": 0.2, "marks": str(tmp_path / "marks")},
               search={"numSamples": samples, "maxConcurrentTrials": 2, "seed": 1})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_driver_killed_with_sigkill_resumes_without_losing_finished_trials(tmp_path):
    path = _counter_experiment(tmp_path, "killed", samples=8)
    marks = tmp_path / "marks"
    proc = _run_cli(path, tmp_path / "store")
    try:
        _wait_for(lambda: len(list(marks.glob("done-*"))) >= 3, 180, "three finished trials")
        finished_before = {p.name[len("done-"):] for p in marks.glob("done-*")}
        time.sleep(0.3)
    finally:
        _kill_group(proc, signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL

    again = _run_cli(path, tmp_path / "store")
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out
    assert "Resuming experiment killed" in out
    results = json.loads((tmp_path / "store" / "killed" / "kubetune-results.json").read_text())
    assert results["counts"]["terminated"] == 8, results["counts"]
    by_id = {t["id"]: t for t in results["trials"]}
    for trial_id in finished_before:
        assert by_id[trial_id]["state"] == "terminated" and by_id[trial_id]["iteration"] == 5
        # a finished trial was never trained again: any later start resumed at its last iteration
        restarts = sorted(marks.glob(f"start-{trial_id}-*"))[1:]
        assert all(p.read_text() == "5" for p in restarts), [p.read_text() for p in restarts]
        # its history (saved with the experiment state) came through the kill whole, from the first driver
        history = by_id[trial_id]["history"]
        assert [r["training_iteration"] for r in history] == [1, 2, 3, 4, 5], history
    # every trial's history ends at its last iteration; one running at the kill may repeat a few
    for t in results["trials"]:
        assert t["history"] and t["history"][-1]["training_iteration"] == 5, t["history"]


def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(tmp_path):
    path = _counter_experiment(tmp_path, "interrupted", samples=6)
    marks = tmp_path / "marks"
    proc = _run_cli(path, tmp_path / "store")
    _wait_for(lambda: len(list(marks.glob("done-*"))) >= 2, 180, "two finished trials")
    _kill_group(proc, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "run the same command again to resume" in out
    assert "Traceback" not in out

    again = _run_cli(path, tmp_path / "store")
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out
    assert "Resuming experiment interrupted" in out and "Best trial" in out


@pytest.mark.parametrize("algorithm", ["random", "hyperopt"])
def test_raising_num_samples_continues_a_finished_experiment(ray_local, tmp_path, algorithm):
    """Katib's LongRunning: the same experiment with a larger budget runs only the new trials."""
    def experiment(samples):
        return load_experiment(doc(
            "longrunning", "kubetune_trials.sleep:train", {"x": {"uniform": {"min": 0, "max": 1}}},
            config={"iterations": 2, "sleep_s": 0.01},
            search={"algorithm": algorithm, "numSamples": samples, "seed": 3,
                    **({"randomWarmupSteps": 2} if algorithm == "hyperopt" else {})},
        ))

    first = run_experiment(experiment(3), storage_override=str(tmp_path))
    assert first.status == "succeeded" and len(first.snapshot.trials) == 3
    more = run_experiment(experiment(5), storage_override=str(tmp_path))
    assert more.restored and more.status == "succeeded", more.message
    assert len(more.snapshot.trials) == 5 and more.snapshot.counts["terminated"] == 5
    old = {t.id: t for t in first.snapshot.trials}
    for t in more.snapshot.trials:
        if t.id in old:
            assert t.metric == old[t.id].metric and t.config == old[t.id].config


def test_a_finished_trials_saved_state_says_it_finished():
    """When a function trainable returns, Tune adds `done` to the last result in place; Ray's JSON of the
    trial, cached at an earlier save, kept the result without it, so a resume now and then brought a
    finished trial back as stopped early (the test above failed 2 runs in 15)."""
    from ray.tune.experiment import Trial

    from kubetune.tune.tracking import ExperimentTracker, TrialState, trial_state

    trial = Trial("__fake", stub=True, trial_id="t0")
    trial.update_last_result({"score": 0.5, "training_iteration": 2})
    assert "done" not in json.loads(trial.get_json_state()[1])["last_result"]  # a save between the two
    trial.last_result.update(done=True)  # what Tune does when the function returns
    trial.set_status(Trial.TERMINATED)
    ExperimentTracker("score", "max", 1, ["x"]).on_trial_complete(0, [trial], trial)

    saved = Trial("__fake", stub=True, trial_id="t0")  # as a resume rebuilds it
    saved.set_status(Trial.TERMINATED)
    saved.restore_run_metadata(trial.get_json_state()[1])
    assert saved.last_result.get("done") is True and trial_state(saved) == TrialState.TERMINATED


def _iterations_started(log_dir, trial_id):
    return [int(line) for line in (log_dir / trial_id).read_text().split()]


def test_pipelined_trials_stop_where_the_stopper_says(ray_local, tmp_path):
    """Without a scheduler a trial computes its next iteration while the driver handles the last
    result, except at stop.maxIterations: there it waits, so it never starts iteration 4."""
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    exp = load_experiment(doc("pipelined", "tests.trainables:records_iterations", {"x": {"grid": [0.2, 0.8]}},
                              config={"log_dir": str(log_dir)}, stop={"maxIterations": 3}, search={"numSamples": 1}))
    outcome = run_experiment(exp, storage_override=str(tmp_path / "store"))
    assert outcome.status == "succeeded", outcome.message
    for t in outcome.snapshot.trials:
        assert t.iteration == 3 and t.last_result["pipelined"] is True
        assert _iterations_started(log_dir, t.id) == [1, 2, 3]


def test_pipelined_trials_stop_at_ashas_rungs(ray_local, tmp_path):
    """With ASHA a trial waits for the driver only at the rungs (1, 2, 4 here): a trial stopped there
    never started the iteration after the one it was stopped at."""
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    exp = load_experiment(doc(
        "pipelined-asha", "tests.trainables:records_iterations",
        {"x": {"grid": [0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]}}, config={"log_dir": str(log_dir)},
        scheduler={"type": "asha", "maxT": 6, "gracePeriod": 1, "reductionFactor": 2}, search={"numSamples": 1}))
    outcome = run_experiment(exp, storage_override=str(tmp_path / "store"))
    assert outcome.status == "succeeded", outcome.message
    stopped = [t for t in outcome.snapshot.trials if t.state == "stopped"]
    assert stopped, "ASHA stopped no trial"
    for t in outcome.snapshot.trials:
        assert t.last_result["pipelined"] is True
        assert _iterations_started(log_dir, t.id) == list(range(1, t.iteration + 1)), t
        assert t.iteration in (1, 2, 4, 6)


def test_results_carry_each_trials_reported_iterations(ray_local, tmp_path, monkeypatch):
    """kubetune-results.json holds every trial's history: what Tune's result.json would say, a few keys a row."""
    exp = load_experiment(doc("history", "kubetune_trials.sleep:train", {"x": {"grid": [0.25, 0.5]}},
                              config={"iterations": 4, "sleep_s": 0.01}, search={"numSamples": 1}))
    monkeypatch.setenv("KUBETUNE_HISTORY_ROWS", "3")
    outcome = run_experiment(exp, storage_override=str(tmp_path))
    assert outcome.status == "succeeded", outcome.message
    results = json.loads((tmp_path / "history" / "kubetune-results.json").read_text())
    assert len(results["trials"]) == 2
    for t in results["trials"]:
        rows = t["history"]
        assert [r["training_iteration"] for r in rows] == [2, 3, 4], rows  # the latest 3 of 4
        assert t["historyDropped"] == 1
        assert set(rows[0]) == {"training_iteration", "score", "time_total_s", "timestamp", "node_ip", "pid"}
        assert rows[-1]["score"] == t["metric"]
        assert rows[0]["time_total_s"] < rows[-1]["time_total_s"]


# ---------------------------------------------------------------- true states, best trial, errors in words (#9)


def test_errored_trials_carry_the_exception_in_words_and_are_never_best(ray_local, tmp_path):
    exp = load_experiment(doc("fails-words", "tests.trainables:reports_then_fails", {"x": {"grid": [1, 2, 3]}},
                              search={"numSamples": 1}))
    outcome = run_experiment(exp, storage_override=str(tmp_path))
    assert outcome.status == "failed" and outcome.exit_code == 3
    # grouped by error, in words, no path to Ray's session folder
    assert "ValueError: bad batch at x=" in outcome.message and "error.txt" not in outcome.message
    assert outcome.best is None  # the errored trials reported 100, the best score of all
    saved = json.loads((tmp_path / "fails-words" / "kubetune-results.json").read_text())
    assert saved["bestTrial"] is None
    for t in saved["trials"]:
        assert t["state"] == "error"
        assert t["error"]["type"] == "ValueError" and t["error"]["message"] == f"bad batch at x={t['config']['x']}"
        assert any("reports_then_fails" in line for line in t["error"]["traceback"]), t["error"]
        assert not any("/tmp/ray" in line or "error.txt" in line for line in t["error"]["traceback"])
    assert len(saved["errors"]) == 3 and all(len(group["trials"]) == 1 for group in saved["errors"])


def test_all_trials_with_the_same_error_are_one_group(ray_local, tmp_path):
    exp = load_experiment(doc("fails-same", "tests.trainables:always_fails", {"x": {"grid": [1, 2, 3]}},
                              search={"numSamples": 1}))
    outcome = run_experiment(exp, storage_override=str(tmp_path))
    assert "all 3 trial(s) failed: RuntimeError: boom from the trainable (3 trial(s)" in outcome.message
    saved = json.loads((tmp_path / "fails-same" / "kubetune-results.json").read_text())
    [group] = saved["errors"]
    assert group["error"] == "RuntimeError: boom from the trainable"
    assert sorted(group["trials"]) == sorted(t["id"] for t in saved["trials"])


def test_scheduler_early_stops_are_their_own_state(ray_local, tmp_path):
    exp = load_experiment(doc(
        "asha-states", "kubetune_trials.sleep:train", {"x": {"grid": [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0]}},
        config={"iterations": 8, "sleep_s": 0.01},
        search={"numSamples": 1, "maxConcurrentTrials": 2},
        scheduler={"type": "asha", "maxT": 8, "gracePeriod": 1, "reductionFactor": 2},
    ))
    outcome = run_experiment(exp, storage_override=str(tmp_path))
    assert outcome.status == "succeeded", outcome.message
    by_state = {}
    for t in outcome.snapshot.trials:
        by_state.setdefault(t.state, []).append(t)
    assert set(by_state) <= {"terminated", "stopped"}
    assert by_state.get("stopped"), "ASHA stopped no trial"
    assert all(t.iteration < 8 for t in by_state["stopped"]) and all(t.iteration == 8 for t in by_state["terminated"])
    counts = outcome.snapshot.counts
    assert counts["stopped"] == len(by_state["stopped"]) and counts["terminated"] + counts["stopped"] == 8
    # still stopped, not terminated, after a resume (the mark lives in the saved experiment)
    again = run_experiment(exp, storage_override=str(tmp_path))
    assert {t.id: t.state for t in again.snapshot.trials} == {t.id: t.state for t in outcome.snapshot.trials}


def test_best_trial_tie_rule_does_not_depend_on_order():
    from kubetune.tune.tracking import Snapshot, TrialRecord

    def rec(trial_id, metric, iteration, state="terminated"):
        return TrialRecord(trial_id, state, {}, metric, iteration, {}, None)

    trials = [rec("b", 0.9, 5), rec("a", 0.9, 5), rec("c", 0.9, 3), rec("d", 0.5, 1), rec("e", 1.0, 1, "error")]
    picks = set()
    import itertools
    for order in itertools.permutations(trials):
        picks.add(Snapshot("score", "max", 5, list(order)).best.id)
    assert picks == {"c"}  # better metric, then fewer iterations ("e" failed, so it is never best)
    assert Snapshot("score", "max", 2, [rec("b", 0.9, 5), rec("a", 0.9, 5)]).best.id == "a"
    assert Snapshot("loss", "min", 2, [rec("b", 0.1, 5), rec("a", 0.2, 1)]).best.id == "b"


def test_infinite_and_nan_metrics_never_break_json_or_the_status(ray_local, tmp_path):
    from kubetune.driver_main import status_fields

    exp = load_experiment(doc("inf", "tests.trainables:infinite", {"x": {"grid": [0.25, 0.75]}}, search={"numSamples": 1}))
    outcome = run_experiment(exp, storage_override=str(tmp_path))
    assert outcome.status == "succeeded", outcome.message
    assert outcome.best.metric == 0.75
    text = (tmp_path / "inf" / "kubetune-results.json").read_text()
    saved = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert saved["bestTrial"]["metric"] == 0.75
    assert all(t["last_result"]["aux"] == "-inf" for t in saved["trials"])
    # a snapshot taken while a trial's last result was inf: the status body is strict JSON
    from kubetune.tune.tracking import Snapshot, TrialRecord

    snap = Snapshot("score", "max", 1, [TrialRecord("t", "running", {"lr": float("nan")}, None, 1,
                                                    {"score": float("inf")}, None)])
    json.dumps(status_fields(snap), allow_nan=False)
    assert status_fields(snap)["trials"]["running"] == 1


def test_sampled_parameters_the_trainable_never_reads_are_named(ray_local, tmp_path):
    exp = load_experiment(doc("unread", "tests.trainables:reads_snake_case",
                              {"lr": {"uniform": {"min": 0.1, "max": 1}}, "batchSize": {"choice": [16, 64]}},
                              search={"numSamples": 2}))
    outcome = run_experiment(exp, storage_override=str(tmp_path))
    assert outcome.status == "succeeded", outcome.message
    [warning] = outcome.snapshot.warnings
    assert "did not read batchSize" in warning and "lr" not in warning.split("did not read")[1].split("from")[0]
    assert "batch_size -> batchSize" in warning
    saved = json.loads((tmp_path / "unread" / "kubetune-results.json").read_text())
    assert saved["warnings"] == [warning]
    assert all("kubetune_unread_parameters" not in t["last_result"] for t in saved["trials"])


def test_a_trainable_that_reads_its_parameters_gets_no_warning(ray_local, tmp_path):
    exp = load_experiment(doc("allread", "tests.trainables:leaky", {"x": {"grid": [1, 2]}}, search={"numSamples": 1}))
    outcome = run_experiment(exp, storage_override=str(tmp_path))
    assert outcome.status == "succeeded" and outcome.snapshot.warnings == []


def test_reading_the_whole_config_counts_as_reading_every_key():
    import pickle

    from kubetune.trial import ReadTrackingConfig

    for use in (dict, lambda c: {**c}, lambda c: list(c), lambda c: c.items(), pickle.dumps):
        config = ReadTrackingConfig({"lr": 0.1, "batchSize": 32})
        use(config)
        assert config.unread(["lr", "batchSize"]) == []
    config = ReadTrackingConfig({"lr": 0.1, "batchSize": 32})
    assert config["lr"] == 0.1 and config.get("batch_size") is None and "momentum" not in config
    assert config.unread(["lr", "batchSize"]) == ["batchSize"] and config.missing == {"batch_size", "momentum"}
    assert type(pickle.loads(pickle.dumps(config))) is dict


def test_a_finished_trial_is_in_the_saved_state_at_once_though_saves_are_throttled(tmp_path):
    """State saves are at most every TUNE_GLOBAL_CHECKPOINT_S (5 s) but forced when a trial finishes."""
    marks = tmp_path / "marks"
    marks.mkdir()
    spec = doc("throttle", "tests.trainables:quick_or_slow", {"x": {"grid": [0.2, 0.9]}},
               config={"marks": str(marks), "slow_s": 120}, search={"numSamples": 1})
    path = tmp_path / "throttle.yaml"
    path.write_text(yaml.safe_dump(spec))
    proc = _run_cli(path, tmp_path / "store", env={"TUNE_GLOBAL_CHECKPOINT_S": "3600"})
    try:
        _wait_for(lambda: list(marks.glob("done-*")), 180, "the quick trial")
        quick = next(marks.glob("done-*")).name[len("done-"):]

        def saved_terminated():
            for state in (tmp_path / "store" / "throttle").glob("experiment_state-*.json"):
                text = state.read_text()
                if quick in text and '\\"status\\": \\"TERMINATED\\"' in text.split(quick, 1)[1][:4000]:
                    return True
            return False

        _wait_for(saved_terminated, 60, "the finished trial in the saved experiment state")
    finally:
        _kill_group(proc, signal.SIGKILL)
        proc.wait(30)


# ---------------------------------------------------------------- no silent hang (#9 point 2)


@pytest.mark.parametrize("resources, distributed, field, words", [
    ({"cpu": 0.5}, {"workers": 4}, "spec.distributed.workers", "4 worker(s) of 0.5 CPU"),
    ({"cpu": 1, "gpu": 1}, None, "spec.trialResources.gpu", "no Ray node has a GPU"),
    ({"cpu": 3}, None, "spec.trialResources.cpu", "3 CPU"),
], ids=["ddp-4x0.5-on-2", "gpu-without-gpu", "3-cpu-on-2"])
def test_a_trial_that_can_never_be_placed_is_refused_at_start(ray_local, tmp_path, resources, distributed, field, words):
    from kubetune.api import SpecError

    extra = {"distributed": distributed} if distributed else {}
    exp = load_experiment(doc("never", "kubetune_trials.sleep:train", {"x": {"uniform": {"min": 0, "max": 1}}},
                              trialResources=resources, **extra))
    with pytest.raises(SpecError) as info:
        run_experiment(exp, storage_override=str(tmp_path))
    [issue] = info.value.issues
    assert issue.path == field and words in issue.message, issue
    assert not (tmp_path / "never").exists()  # refused before Tune wrote anything


def test_a_trial_waiting_for_resources_is_reported_with_rays_pending_demand(ray_local, tmp_path, monkeypatch):
    from kubetune.tune.progress import summary_line

    monkeypatch.setenv("KUBETUNE_PENDING_REPORT_SECONDS", "1")
    seen = []
    exp = load_experiment(doc("queued", "kubetune_trials.sleep:train", {"x": {"grid": [0.2, 0.8]}},
                              config={"iterations": 60, "sleep_s": 0.1}, search={"numSamples": 1},
                              trialResources={"cpu": 2}))
    outcome = run_experiment(exp, storage_override=str(tmp_path), sinks=[seen.append])
    assert outcome.status == "succeeded", outcome.message
    reasons = [t.pending_reason for s in seen for t in s.trials if t.pending_reason]
    assert reasons, "no snapshot reported the waiting trial"
    assert "Ray cannot place 1 x (2 CPU) yet; free: 0 CPU of 2 CPU" in reasons[0], reasons[0]
    line = next(summary_line(s) for s in seen if any(t.pending_reason for t in s.trials))
    assert " waiting: Ray cannot place 1 x (2 CPU) yet" in line
    assert all(t.pending_reason is None for t in outcome.snapshot.trials)  # nothing waits at the end


def test_s3_skips_the_instance_metadata_service_unless_it_is_the_only_credential_source(tmp_path):
    from kubetune.api.spec import Storage
    from kubetune.tune.storage import skip_instance_metadata

    aws = Storage.model_validate({"uri": "s3://bucket/x"})
    minio = Storage.model_validate({"uri": "s3://bucket/x", "endpoint": "http://minio:9000"})
    keys = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    assert skip_instance_metadata(minio, {}) and skip_instance_metadata(aws, keys)
    assert skip_instance_metadata(aws, {"AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/token"})
    (tmp_path / "AWS_ACCESS_KEY_ID").write_text("k")  # a mounted Secret
    assert skip_instance_metadata(aws, {"KUBETUNE_S3_SECRET_DIR": str(tmp_path)})
    assert not skip_instance_metadata(aws, {})  # an EC2 instance profile is the only source
    assert not skip_instance_metadata(minio, {"AWS_EC2_METADATA_DISABLED": "false"})  # the user decides


def test_ray_storage_error_is_said_in_the_specs_terms():
    """A checkpointing trial on a Ray node that cannot reach local storage (issue #10 point 2): Ray's message
    names `RunConfig(storage_path)`; the user's file has spec.storage.uri."""
    from kubetune.tune.tracking import in_spec_terms, parse_error_text

    ray_text = ("Traceback (most recent call last):\n  File \"storage.py\", line 565, in persist_current_checkpoint\n"
                "RuntimeError: Unable to set up cluster storage with the following settings:\nStorageContext<\n"
                "  storage_filesystem='local',\n>\nCheck that all nodes in the cluster have read/write access to the "
                "configured storage path. `RunConfig(storage_path)` should be set to a cloud storage URI")
    details = in_spec_terms(parse_error_text(ray_text))
    assert details["type"] == "RuntimeError"
    assert details["message"].startswith("spec.storage.uri: ") and "s3://" in details["message"]
    assert "RunConfig" not in details["message"] and any("persist_current_checkpoint" in l for l in details["traceback"])
    other = parse_error_text("Traceback (most recent call last):\nValueError: boom")
    assert in_spec_terms(other) == other


# ---------------------------------------------------------------- trial actors without Tune's runtime env (#9 perf)


RUNTIME_ENV_PROBE = """
import json, os, sys
import ray
from kubetune.api import load_experiment
from kubetune.tune.driver import run_experiment

seen = {}
for name, env in (("same environment", {}), ("AWS_SESSION_TOKEN set after ray.init", {"AWS_SESSION_TOKEN": "t"})):
    def set_env_after_ray_started(_snapshot, env=env):
        os.environ.update(env)
    outcome = run_experiment(load_experiment(json.loads(sys.argv[1])), storage_override=f"{sys.argv[2]}/{len(seen)}",
                             num_cpus=2, metrics=False, on_start=set_env_after_ray_started)
    assert outcome.status == "succeeded", outcome.message
    seen[name] = sorted({t.last_result["runtime_env_vars"] for t in outcome.snapshot.trials})
    ray.shutdown()
    os.environ.pop("AWS_SESSION_TOKEN", None)
print(json.dumps(seen))
"""


def test_trial_actors_skip_tunes_runtime_env_only_where_the_workers_have_it(tmp_path):
    """Through the driver, on real embedded Rays of 2 CPUs: the trial actors get no runtime environment
    (so Ray may give them the workers it started with itself) while the workers inherited everything in
    Tune's; a variable Tune gives trial actors that the workers lack (set after ray.init) brings Tune's
    runtime environment back."""
    spec = doc("runtime-env", "tests.trainables:runtime_env_vars", {"x": {"uniform": {"min": 0, "max": 1}}},
               search={"numSamples": 2}, checkpoint={"frequency": 0, "atEnd": False})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "trial-image"), str(ROOT)])}
    env.pop("AWS_SESSION_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-c", RUNTIME_ENV_PROBE, json.dumps(spec), str(tmp_path)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        _kill_group(proc, signal.SIGKILL)  # the probe's Ray too, should it hang
        proc.wait(30)
    assert proc.returncode == 0, out + err[-3000:]
    assert json.loads(out.strip().splitlines()[-1]) == {
        "same environment": ["(none)"],
        "AWS_SESSION_TOKEN set after ray.init": ["AWS_SESSION_TOKEN,PL_DISABLE_FORK"],
    }
