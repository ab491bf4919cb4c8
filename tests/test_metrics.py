"""kubetune's metrics: one set of definitions, bounded labels, the README and dashboards in sync with the code,
the operator's helpers, and the driver's metrics and plot from real Ray Tune runs."""

import http.server
import json
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from kubetune import dashboards, metrics
from kubetune.metrics import MetricDef, Metrics, TrialSeries

ROOT = Path(__file__).resolve().parents[1]


def _section(text: str, marker: str) -> str:
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    assert start in text and end in text, f"README has no {marker} section"
    return text.split(start, 1)[1].split(end, 1)[0].strip()


# ---------------------------------------------------------------- definitions, README, dashboards


def test_readme_lists_every_metric_and_panel():
    readme = (ROOT / "README.md").read_text()
    assert _section(readme, "metrics-table") == metrics.readme_table().strip(), \
        "README's metrics table is stale: paste `python -m kubetune.metrics`"
    assert _section(readme, "dashboards-table") == dashboards.readme_table().strip(), \
        "README's dashboards table is stale: paste `python -m kubetune.dashboards --readme`"


def test_committed_dashboards_are_generated_from_code():
    for board in dashboards.dashboards():
        path = ROOT / dashboards.OUTPUT_DIR / board.file
        assert path.exists() and path.read_text() == dashboards.render(board), \
            f"{path.relative_to(ROOT)} is stale: run `python -m kubetune.dashboards`"


def test_every_metric_is_named_kubetune_and_every_label_is_bounded():
    assert metrics.label_problems() == []
    from kubetune.tune.tracking import TrialState

    assert metrics.TRIAL_STATES == TrialState.ALL
    assert len({d.name for d in metrics.DEFINITIONS}) == len(metrics.DEFINITIONS)


def test_a_label_without_a_bound_is_caught():
    defs = [MetricDef("kubetune_checkpoints", "counter", "by path", ("namespace", "path"), "driver"),
            MetricDef("checkpoints", "counter", "not ours", (), "driver")]
    problems = metrics.label_problems(defs)
    assert problems == ["kubetune_checkpoints: label 'path' has no declared bound", "checkpoints: not named kubetune_…"]


@pytest.mark.parametrize("label, value", [
    ("trial", "/tmp/results/quickstart/train_1"),        # a path
    ("reason", "Connection refused by 10.0.0.1:6443"),  # an error text
    ("experiment", "lr=0.01,momentum=0.9"),             # a config value
    ("state", "paused"),                                # outside the enum
    ("lr", "0.01"),                                     # a label nobody declared
])
def test_label_values_outside_their_bound_are_caught(label, value):
    with pytest.raises(metrics.UnboundedLabel):
        metrics.check_label_value("kubetune_x", label, value)


def test_an_exposition_with_an_unbounded_label_or_an_undefined_metric_is_caught():
    registry = CollectorRegistry()
    from prometheus_client import Counter, Gauge

    Gauge("kubetune_trial_objective", "ok", ["namespace", "experiment", "trial"], registry=registry) \
        .labels("default", "quickstart", "3fa2c_00001").set(1)
    Counter("kubetune_checkpoint_writes", "bad", ["path"], registry=registry).labels("/tmp/ckpt").inc()
    problems = metrics.sample_problems(generate_latest(registry).decode())
    assert problems == ["kubetune_checkpoint_writes_total: no definition in kubetune.metrics"]
    registry = CollectorRegistry()
    Gauge("kubetune_trial_objective", "bad", ["namespace", "experiment", "trial"], registry=registry) \
        .labels("default", "quickstart", "/tmp/quickstart/train_3fa2c").set(1)
    [problem] = metrics.sample_problems(generate_latest(registry).decode())
    assert "trial='/tmp/quickstart/train_3fa2c'" in problem


def test_a_dashboard_reading_an_undefined_metric_is_caught():
    boards = [dashboards.to_json(b) for b in dashboards.dashboards()]
    assert dashboards.undefined_metrics(boards) == []
    boards[0]["panels"][0]["targets"][0]["expr"] = "sum(rate(kubetune_trials_exploded_total[5m]))"
    assert dashboards.undefined_metrics(boards) == [
        f"kubetune / Overview / {boards[0]['panels'][0]['title']}: kubetune_trials_exploded_total"]


def test_every_dashboard_has_its_variables_and_distinct_panel_ids():
    for board in (dashboards.to_json(b) for b in dashboards.dashboards()):
        names = [v["name"] for v in board["templating"]["list"]]
        assert names[0] == "datasource"
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))
        for panel in board["panels"]:
            assert panel["description"] and panel["targets"]
            assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    experiment = dashboards.to_json(dashboards.experiment())
    assert [v["name"] for v in experiment["templating"]["list"]] == ["datasource", "namespace", "experiment"]


# ---------------------------------------------------------------- per-trial series and the operator


def test_finished_trials_series_go_after_the_ttl():
    now = [100.0]
    series = TrialSeries(ttl_s=60, clock=lambda: now[0])
    series.set(("ns", "exp", "a0000_00000"), objective=0.5, iteration=3)
    series.set(("ns", "exp", "a0000_00001"), objective=0.7, iteration=1)
    series.finish(("ns", "exp", "a0000_00000"))
    now[0] += 59
    assert len(series.keys()) == 2
    now[0] += 1
    assert series.keys() == [("ns", "exp", "a0000_00001")]
    [objective] = [f for f in series.collect() if f.name == "kubetune_trial_objective"]
    assert [(s.labels["trial"], s.value) for s in objective.samples] == [("a0000_00001", 0.7)]


def test_reconcile_metrics_count_time_and_classify_errors():
    from kubernetes.client.rest import ApiException

    m = Metrics(CollectorRegistry())
    with metrics.reconciling("create", m):
        pass
    from kubetune.controller.kube import Refused

    for exc in (ApiException(status=409), ApiException(status=503), ConnectionError("refused"), ValueError("x"),
                Refused("create", "Job", "x", 403, "jobs is forbidden: User cannot create")):
        with pytest.raises(type(exc)), metrics.reconciling("job", m):
            raise exc
    value = m.registry.get_sample_value
    assert value("kubetune_operator_reconciles_total", {"trigger": "create", "result": "ok"}) == 1
    assert value("kubetune_operator_reconciles_total", {"trigger": "job", "result": "error"}) == 5
    for reason in ("conflict", "server_error", "unreachable", "internal", "forbidden"):
        assert value("kubetune_operator_reconcile_errors_total", {"reason": reason}) == 1
    assert value("kubetune_operator_reconcile_duration_seconds_count", {"trigger": "job"}) == 5
    m.experiments.observe("team-a", "one", "Running")
    m.experiments.observe("team-a", "two", "Running")
    m.experiments.observe("team-a", "three", "Failed")
    m.experiments.observe("team-a", "three", None)  # deleted
    assert value("kubetune_operator_experiments", {"namespace": "team-a", "phase": "Running"}) == 2
    assert value("kubetune_operator_experiments", {"namespace": "team-a", "phase": "Failed"}) is None
    assert metrics.sample_problems(generate_latest(m.registry).decode()) == []


def test_api_requests_are_timed_by_verb_and_resource():
    """A real kubernetes ApiClient against a real HTTP server on loopback."""
    from kubernetes import client

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = client.Configuration()
        config.host = f"http://127.0.0.1:{server.server_address[1]}"
        m = Metrics(CollectorRegistry())
        api = metrics.instrument_api_client(client.ApiClient(config), m)
        metrics.instrument_api_client(api, m)  # twice is once
        client.CoreV1Api(api).read_namespaced_config_map("x", "team-a")
        client.CustomObjectsApi(api).get_namespaced_custom_object("ray.io", "v1", "team-a", "rayclusters", "x")
    finally:
        server.shutdown()
    value = m.registry.get_sample_value
    assert value("kubetune_operator_api_request_duration_seconds_count", {"verb": "GET", "resource": "configmaps"}) == 1
    assert value("kubetune_operator_api_request_duration_seconds_count", {"verb": "GET", "resource": "rayclusters"}) == 1


# ---------------------------------------------------------------- the driver, on a real Ray


def _doc(name, entrypoint, parameters, **spec):
    body = {"trainable": {"entrypoint": entrypoint, "config": spec.pop("config", {})},
            "objective": {"metric": "score", "mode": "max"}, "parameters": parameters}
    body.update(spec)
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "TuneExperiment", "metadata": {"name": name}, "spec": body}


def _series(registry, experiment: str) -> list[tuple[str, dict]]:
    return [(s.name, s.labels) for family in registry.collect() for s in family.samples
            if s.labels.get("experiment") == experiment]


@pytest.mark.ray
def test_driver_metrics_and_plot_from_a_real_run(ray_local, tmp_path):
    from kubetune.api import load_experiment
    from kubetune.tune.driver import run_experiment

    name = "metrics-asha"
    exp = load_experiment(_doc(
        name, "tests.metric_trainables:curve", {"x": {"grid": [6, 5, 4, 3, 2, 1]}},
        config={"iterations": 4, "fail_x": 2, "flaky_x": 6},
        search={"numSamples": 1, "maxConcurrentTrials": 1},
        scheduler={"type": "asha", "maxT": 4, "gracePeriod": 1, "reductionFactor": 2},
        stop={"timeBudgetSeconds": 3600},
        failure={"maxRetries": 1},
    ))
    outcome = run_experiment(exp, storage_override=str(tmp_path))
    assert outcome.status == "succeeded", outcome.message
    labels = {"namespace": "default", "experiment": name}
    value = lambda metric, **extra: metrics.REGISTRY.get_sample_value(metric, {**labels, **extra})  # noqa: E731
    records = {t.id: t for t in outcome.snapshot.trials}
    errored = [t for t in records.values() if t.state == "error"]
    assert len(errored) == 1 and errored[0].config == {"x": 2}
    assert value("kubetune_trials_errored_total") == 1
    assert value("kubetune_trials_completed_total") == 5
    # the always-failing trial and the flaky one were each retried once
    assert value("kubetune_trials_retried_total") == 2
    # worse trials after better ones: ASHA stops some before maxT; the trials gauge counts as the status does
    stopped = {t.id for t in records.values() if t.state == "stopped"}
    assert stopped and all(records[i].iteration < 4 for i in stopped)
    assert value("kubetune_trials_early_stopped_total", scheduler="asha") == len(stopped)
    for state, n in outcome.snapshot.counts.items():
        if state != "total":
            assert value("kubetune_trials", state=state) == n, state
    assert value("kubetune_trials", state="terminated") == 5 - len(stopped) and value("kubetune_trials", state="error") == 1
    assert value("kubetune_best_objective") == outcome.best.metric == 24
    results = value("kubetune_results_total")
    assert results >= sum(t.iteration for t in records.values())
    assert value("kubetune_trial_step_seconds_count") == results
    assert value("kubetune_checkpoint_save_seconds_count") >= 6 and value("kubetune_checkpoint_size_bytes_sum") > 0
    assert value("kubetune_checkpoint_upload_seconds_count") >= 1
    assert 0 < value("kubetune_time_budget_used_ratio") < 0.1
    best = outcome.best.id
    assert value("kubetune_trial_objective", trial=best) == 24 and value("kubetune_trial_iteration", trial=best) == 4
    assert value("kubetune_trial_samples_per_second", trial=best) > 0
    assert metrics.sample_problems(generate_latest(metrics.REGISTRY).decode()) == []

    # finished trials' series go once their time is up; the experiment's own stay
    ttl = metrics.METRICS.trials.ttl_s
    metrics.METRICS.trials.ttl_s = 0
    try:
        assert value("kubetune_trial_objective", trial=best) is None
        assert not [n for n, _ in _series(metrics.REGISTRY, name) if n.startswith("kubetune_trial_") and "step" not in n]
    finally:
        metrics.METRICS.trials.ttl_s = ttl

    png = (tmp_path / name / "kubetune-trials.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.ray
def test_metrics_off_collects_nothing_but_still_plots(ray_local, tmp_path):
    from kubetune.api import load_experiment
    from kubetune.tune.driver import run_experiment

    name = "metrics-off"
    exp = load_experiment(_doc(name, "tests.metric_trainables:quick", {"x": {"grid": [1, 2]}}))
    outcome = run_experiment(exp, storage_override=str(tmp_path), metrics=False)
    assert outcome.status == "succeeded"
    assert _series(metrics.REGISTRY, name) == []
    assert (tmp_path / name / "kubetune-trials.png").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_series_left_after_an_experiment_do_not_grow_with_its_trials(ray_local, tmp_path, capsys):
    from kubetune.api import load_experiment
    from kubetune.tune.driver import run_experiment

    counts = {}
    ttl = metrics.METRICS.trials.ttl_s
    try:
        for trials in (2, 100):
            name = f"series-{trials}"
            exp = load_experiment(_doc(name, "tests.metric_trainables:quick", {"x": {"uniform": {"min": 0, "max": 1}}},
                                       search={"numSamples": trials, "maxConcurrentTrials": 2, "seed": 1}))
            outcome = run_experiment(exp, storage_override=str(tmp_path))
            assert outcome.status == "succeeded" and outcome.snapshot.counts["terminated"] == trials
            metrics.METRICS.trials.ttl_s = ttl  # while the TTL runs, every finished trial still has its series
            during = len(_series(metrics.REGISTRY, name))
            metrics.METRICS.trials.ttl_s = 0
            counts[trials] = (during, len(_series(metrics.REGISTRY, name)))
    finally:
        metrics.METRICS.trials.ttl_s = ttl
    with capsys.disabled():  # shown in CI's log without -s
        print(f"\nseries of an experiment after it ends: 2 trials -> {counts[2][1]}, 100 trials -> {counts[100][1]} "
              f"(within the TTL: {counts[2][0]} and {counts[100][0]})")
    assert counts[100][1] == counts[2][1]
    assert counts[100][0] == counts[2][0] + 98 * 2  # objective and iteration of each finished trial, until the TTL


def test_driver_pod_exposes_its_metrics_port():
    from kubetune.api.load import load_spec
    from kubetune.controller.builders import build_driver_job
    from kubetune.controller.settings import Settings

    spec = load_spec(_doc("x", "tests.metric_trainables:quick", {"x": {"grid": [1]}})["spec"])
    job = build_driver_job("x", "team-a", spec, Settings.from_env({}))
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert {"containerPort": metrics.DRIVER_METRICS_PORT, "name": "metrics"} in container["ports"]
    assert job["spec"]["template"]["metadata"]["labels"]["kubetune.io/component"] == "driver"


def test_metrics_port_setting_and_a_busy_port():
    import socket

    from kubetune.tune.telemetry import serve_or_warn

    assert metrics.driver_metrics_port({}) == 9450
    assert metrics.driver_metrics_port({"KUBETUNE_DRIVER_METRICS_PORT": "0"}) == 0
    with pytest.raises(ValueError, match="KUBETUNE_DRIVER_METRICS_PORT: 'nine' is not a port number"):
        metrics.driver_metrics_port({"KUBETUNE_DRIVER_METRICS_PORT": "nine"})
    warnings = []
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert serve_or_warn(busy.getsockname()[1], "127.0.0.1", warnings.append) is None
    assert len(warnings) == 1 and "metrics not served" in warnings[0]
    assert serve_or_warn(0, "127.0.0.1", warnings.append) is None and len(warnings) == 1


def test_a_trial_reports_its_samples_and_checkpoint_cost(capsys):
    """Outside Ray, trial.report prints what it would send: the user's metrics plus kubetune's `_kubetune` figures."""
    import ast

    from kubetune import trial
    from kubetune.trial_stats import RESULT_KEY

    trial.bind(trial.TrialContext(checkpoint_frequency=2))
    try:
        trial.report({"score": 1.0})  # nothing to add: the result stays as written
        trial.report({"score": 2.0}, state={"weights": list(range(1000))}, samples=128)
        trial.report({"score": 3.0}, samples=128)
    finally:
        trial.bind(trial.TrialContext())
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[kubetune.trial]")]
    results = [ast.literal_eval(line.split(": ", 1)[1].removesuffix(" (checkpoint)")) for line in lines]
    assert RESULT_KEY not in results[0]
    second, third = results[1][RESULT_KEY], results[2][RESULT_KEY]
    assert second["samples"] == 128 and second["checkpoint_save_s"] > 0 and second["checkpoint_bytes"] > 1000
    assert "checkpoint_upload_s" not in second
    # the checkpoint was persisted inside the second report: its time rides on the next result
    assert third["samples"] == 128 and third["checkpoint_upload_s"] >= 0 and "checkpoint_save_s" not in third
    assert lines[1].endswith("(checkpoint)")


def test_operator_counters_start_at_zero_for_every_label_value():
    m = Metrics(CollectorRegistry())
    metrics.init_operator_series(m)
    value = m.registry.get_sample_value
    assert value("kubetune_operator_reconcile_errors_total", {"reason": "invalid_spec"}) == 0
    assert value("kubetune_operator_children_created_total", {"kind": "RayCluster"}) == 0
    assert value("kubetune_operator_reconciles_total", {"trigger": "retry", "result": "error"}) == 0
    assert value("kubetune_trials_started_total", {"namespace": "default", "experiment": "x"}) is None
    assert metrics.sample_problems(generate_latest(m.registry).decode()) == []
