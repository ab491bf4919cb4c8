"""kubetune's Grafana dashboards, generated from code: overview, experiment drill-down, operator health.

Plain dicts in Grafana's dashboard JSON model (schemaVersion 39), written to
`charts/kubetune/dashboards/*.json`, which the chart ships as ConfigMaps for Grafana's sidecar.
Each panel names the metrics behind it (checked against kubetune.metrics by the tests) and says
what a user reads from it (the panel's description and the README's table).

    python -m kubetune.dashboards            # rewrite charts/kubetune/dashboards/*.json
    python -m kubetune.dashboards --check    # exit 1 when the committed files differ
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
OUTPUT_DIR = Path("charts") / "kubetune" / "dashboards"

# Where a panel's data comes from: the driver (also `kubetune run`), the operator, or Ray's own node metrics.
SOURCES = ("driver", "operator", "ray")

EXP = 'namespace="$namespace", experiment="$experiment"'


@dataclass
class Query:
    expr: str
    legend: str = ""


@dataclass
class Panel:
    title: str
    kind: str  # timeseries | stat | bargauge | table
    queries: list[Query]
    reads: str  # what a user reads from it
    source: str = "driver"
    unit: str = "short"
    width: int = 12
    height: int = 8
    stacked: bool = False
    core: bool = True  # shows data wherever its source runs (False: needs a GPU)


@dataclass
class Dashboard:
    uid: str
    title: str
    file: str
    description: str
    variables: list[str]  # namespace, experiment
    panels: list[Panel] = field(default_factory=list)


def _rate(metric: str, selector: str = "") -> str:
    return f"rate({metric}{{{selector}}}[$__rate_interval])"


def _quantile(q: float, metric: str, selector: str, by: str = "") -> str:
    by_labels = f"le{', ' + by if by else ''}"
    return f"histogram_quantile({q}, sum by ({by_labels}) ({_rate(metric + '_bucket', selector)}))"


def overview() -> Dashboard:
    ns = 'namespace=~"$namespace"'
    return Dashboard(
        uid="kubetune-overview", title="kubetune / Overview", file="kubetune-overview.json",
        description="Every experiment at a glance: phases, trials by state, best objectives, errors.",
        variables=["namespace"],
        panels=[
            Panel("Experiments by phase", "bargauge", [Query("sum by (phase) (kubetune_operator_experiments{%s})" % ns, "{{phase}}")],
                  "How many TuneExperiments are Pending, Provisioning, Running, Succeeded, Failed or Suspended.",
                  source="operator", width=8),
            Panel("Running experiments", "stat", [Query("count(sum by (namespace, experiment) (kubetune_trials{%s, state=\"running\"}) > 0) or vector(0)" % ns)],
                  "Experiments with at least one trial running now.", width=4),
            Panel("Trials by state", "timeseries", [Query("sum by (state) (kubetune_trials{%s})" % ns, "{{state}}")],
                  "Pending, running, finished and failed trials over time, over all experiments.", stacked=True),
            Panel("Best objective per experiment", "bargauge",
                  [Query("max by (namespace, experiment) (kubetune_best_objective{%s})" % ns, "{{namespace}}/{{experiment}}")],
                  "Each experiment's best objective so far (by each trial's last value).", width=12),
            Panel("Results per second", "timeseries",
                  [Query("sum by (namespace, experiment) (%s)" % _rate("kubetune_results_total", ns), "{{namespace}}/{{experiment}}")],
                  "How fast each experiment's trials report: a drop to zero while trials run means they are stuck.", unit="ops"),
            Panel("Trial errors and retries", "timeseries", [
                Query("sum by (namespace, experiment) (%s)" % _rate("kubetune_trials_errored_total", ns), "errored {{experiment}}"),
                Query("sum by (namespace, experiment) (%s)" % _rate("kubetune_trials_retried_total", ns), "retried {{experiment}}"),
            ], "Trials failing for good (errored) and failures retried under failure.maxRetries.", unit="ops"),
            Panel("Reconcile errors by reason", "timeseries",
                  [Query("sum by (reason) (%s)" % _rate("kubetune_operator_reconcile_errors_total"), "{{reason}}")],
                  "The operator's failed reconciles by error class (invalid_spec, conflict, forbidden, unreachable, ...).",
                  source="operator", unit="ops"),
        ],
    )


def experiment() -> Dashboard:
    return Dashboard(
        uid="kubetune-experiment", title="kubetune / Experiment", file="kubetune-experiment.json",
        description="One experiment: its trials' objectives and iterations, early stops, checkpoint cost, GPUs.",
        variables=["namespace", "experiment"],
        panels=[
            Panel("Objective per trial", "timeseries", [Query("kubetune_trial_objective{%s}" % EXP, "{{trial}}")],
                  "Each running (and recently finished) trial's last objective value; a line that stops early is a trial "
                  "the scheduler stopped.", width=16),
            Panel("Best objective", "stat", [Query("kubetune_best_objective{%s}" % EXP)],
                  "The best objective so far, as the status's bestTrial shows it.", width=8),
            Panel("Iteration per trial", "timeseries", [Query("kubetune_trial_iteration{%s}" % EXP, "{{trial}}")],
                  "How far each trial got: read with the objective panel, it is the objective against iteration.",
                  width=12),
            Panel("Trials by state", "timeseries", [Query("sum by (state) (kubetune_trials{%s})" % EXP, "{{state}}")],
                  "Pending, running, terminated and failed trials of this experiment.", stacked=True, width=12),
            Panel("Trial outcomes", "stat", [
                Query("sum(kubetune_trials_started_total{%s})" % EXP, "started"),
                Query("sum(kubetune_trials_completed_total{%s})" % EXP, "completed"),
                Query("sum(kubetune_trials_early_stopped_total{%s})" % EXP, "early-stopped"),
                Query("sum(kubetune_trials_errored_total{%s})" % EXP, "errored"),
                Query("sum(kubetune_trials_retried_total{%s})" % EXP, "retried"),
            ], "Trials started, completed, stopped early by the scheduler, failed and retried in this run of the driver.",
                width=12),
            Panel("Early stops per minute", "timeseries",
                  [Query("sum by (scheduler) (%s) * 60" % _rate("kubetune_trials_early_stopped_total", EXP), "{{scheduler}}")],
                  "How often the scheduler (ASHA, HyperBand, median stopping) cuts trials short.", width=12),
            Panel("Step time", "timeseries", [
                Query(_quantile(0.5, "kubetune_trial_step_seconds", EXP), "p50"),
                Query(_quantile(0.95, "kubetune_trial_step_seconds", EXP), "p95"),
            ], "Wall time of one training iteration across trials: slow steps, or a widening p95, point at "
               "contention or a slow node.", unit="s"),
            Panel("Samples per second per trial", "timeseries",
                  [Query("kubetune_trial_samples_per_second{%s}" % EXP, "{{trial}}")],
                  "Training throughput of each trial (for trainables that pass `samples=` to trial.report).", unit="ops"),
            Panel("Checkpoint cost", "timeseries", [
                Query("sum(%s) / sum(%s)" % (_rate("kubetune_checkpoint_save_seconds_sum", EXP),
                                             _rate("kubetune_checkpoint_save_seconds_count", EXP)), "save (mean)"),
                Query("sum(%s) / sum(%s)" % (_rate("kubetune_checkpoint_upload_seconds_sum", EXP),
                                             _rate("kubetune_checkpoint_upload_seconds_count", EXP)), "persist (mean)"),
            ], "Seconds per checkpoint spent serialising it and persisting it to storage (S3): the price of "
               "checkpoint.frequency.", unit="s"),
            Panel("Checkpoint size", "timeseries", [
                Query("sum(%s) / sum(%s)" % (_rate("kubetune_checkpoint_size_bytes_sum", EXP),
                                             _rate("kubetune_checkpoint_size_bytes_count", EXP)), "mean size"),
                Query("sum(%s)" % _rate("kubetune_checkpoint_size_bytes_sum", EXP), "bytes/s written"),
            ], "Mean checkpoint size, and the bytes per second the experiment writes to storage.", unit="bytes"),
            Panel("Trial GPU memory", "timeseries", [Query("kubetune_trial_gpu_memory_bytes{%s}" % EXP, "{{trial}}")],
                  "Peak GPU memory each trial allocated in its last iteration: room left for a bigger batch or "
                  "a smaller GPU fraction.", unit="bytes", core=False),
            Panel("GPU utilisation (Ray nodes)", "timeseries", [
                Query('avg by (pod) (ray_node_gpus_utilization{namespace="$namespace", pod=~"$experiment-.*"})', "{{pod}}"),
                Query("avg(kubetune_trial_gpu_utilization_ratio{%s}) * 100" % EXP, "trials (mean)"),
            ], "Utilisation of the RayCluster's GPUs from Ray's node metrics (percent), and as the trials see it.",
                source="ray", unit="percent", core=False),
            Panel("Time budget used", "stat", [
                Query("kubetune_time_budget_used_ratio{%s}" % EXP, "budget used"),
            ], "Share of stop.timeBudgetSeconds spent (only for experiments with a time budget).", unit="percentunit",
                width=6),
            Panel("Elapsed", "stat", [Query("kubetune_experiment_elapsed_seconds{%s}" % EXP)],
                  "How long this run of the driver has been going.", unit="s", width=6),
        ],
    )


def operator() -> Dashboard:
    return Dashboard(
        uid="kubetune-operator", title="kubetune / Operator", file="kubetune-operator.json",
        description="The kubetune operator: reconciles, their duration and errors, children, API latency.",
        variables=[],
        panels=[
            Panel("Reconciles per second", "timeseries",
                  [Query("sum by (trigger, result) (%s)" % _rate("kubetune_operator_reconciles_total"), "{{trigger}} {{result}}")],
                  "Reconciles by trigger (create, resume, update, resync, raycluster, job, retry) and result.",
                  source="operator", unit="ops"),
            Panel("Reconcile duration", "timeseries", [
                Query(_quantile(0.5, "kubetune_operator_reconcile_duration_seconds", ""), "p50"),
                Query(_quantile(0.99, "kubetune_operator_reconcile_duration_seconds", ""), "p99"),
            ], "How long one reconcile takes: a rising p99 means a slow API server or a large namespace.",
                source="operator", unit="s"),
            Panel("Reconcile errors by reason", "timeseries",
                  [Query("sum by (reason) (%s)" % _rate("kubetune_operator_reconcile_errors_total"), "{{reason}}")],
                  "Failed reconciles by error class; invalid_spec is the user's to fix, the others the cluster's.",
                  source="operator", unit="ops"),
            Panel("Experiments by phase", "timeseries",
                  [Query("sum by (phase) (kubetune_operator_experiments)", "{{phase}}")],
                  "TuneExperiments the operator manages, by phase.", source="operator", stacked=True),
            Panel("Children created and deleted", "timeseries", [
                Query("sum by (kind) (%s)" % _rate("kubetune_operator_children_created_total"), "created {{kind}}"),
                Query("sum by (kind) (%s)" % _rate("kubetune_operator_children_deleted_total"), "deleted {{kind}}"),
            ], "ConfigMaps, RayClusters and driver Jobs the operator creates and deletes; steady creation is a "
               "child being deleted behind the operator's back.", source="operator", unit="ops"),
            Panel("Phase transitions", "timeseries",
                  [Query("sum by (phase) (%s)" % _rate("kubetune_operator_phase_transitions_total"), "{{phase}}")],
                  "Phase changes per second, by the phase entered.", source="operator", unit="ops"),
            Panel("API request latency (p95)", "timeseries",
                  [Query(_quantile(0.95, "kubetune_operator_api_request_duration_seconds", "", "verb, resource"),
                         "{{verb}} {{resource}}")],
                  "The Kubernetes API server's latency as the operator sees it, per verb and resource.",
                  source="operator", unit="s", width=24),
        ],
    )


def dashboards() -> list[Dashboard]:
    return [overview(), experiment(), operator()]


# ---------------------------------------------------------------- JSON


def _variable(name: str) -> dict:
    selector = {"namespace": "kubetune_trials", "experiment": 'kubetune_trials{namespace=~"$namespace"}'}[name]
    query = f"label_values({selector}, {name})"
    return {
        "type": "query", "name": name, "label": name, "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-values", "qryType": 1}, "definition": query,
        "refresh": 2, "sort": 1, "includeAll": name == "namespace", "multi": False,
        "current": {}, "options": [], "hide": 0,
    }


def _panel_json(panel: Panel, pid: int, x: int, y: int) -> dict:
    targets = [{"datasource": DATASOURCE, "expr": q.expr, "legendFormat": q.legend or "__auto", "refId": chr(65 + i),
                "range": panel.kind not in ("bargauge", "table"), "instant": panel.kind in ("bargauge", "table")} for i, q in enumerate(panel.queries)]
    defaults: dict = {"unit": panel.unit}
    if panel.kind == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 20 if panel.stacked else 0,
                              "stacking": {"mode": "normal" if panel.stacked else "none", "group": "A"},
                              "showPoints": "never", "spanNulls": False}
    options: dict = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    if panel.kind == "timeseries":
        options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                   "tooltip": {"mode": "multi", "sort": "desc"}}
    return {
        "id": pid, "type": panel.kind, "title": panel.title, "description": panel.reads, "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "targets": targets, "fieldConfig": {"defaults": defaults, "overrides": []}, "options": options,
    }


def to_json(d: Dashboard) -> dict:
    panels, x, y, row_h = [], 0, 0, 0
    for i, panel in enumerate(d.panels, start=1):
        if x + panel.width > 24:
            x, y, row_h = 0, y + row_h, 0
        panels.append(_panel_json(panel, i, x, y))
        x, row_h = x + panel.width, max(row_h, panel.height)
    datasource_var = {"type": "datasource", "name": "datasource", "label": "Prometheus", "query": "prometheus",
                      "current": {}, "hide": 0, "refresh": 1, "options": []}
    return {
        "uid": d.uid, "title": d.title, "description": d.description, "tags": ["kubetune"],
        "editable": True, "graphTooltip": 1, "schemaVersion": 39, "version": 1,
        "time": {"from": "now-1h", "to": "now"}, "refresh": "30s", "timezone": "",
        "templating": {"list": [datasource_var] + [_variable(v) for v in d.variables]},
        "annotations": {"list": []}, "links": [], "panels": panels,
    }


def render(d: Dashboard) -> str:
    return json.dumps(to_json(d), indent=2, sort_keys=False) + "\n"


def write(root: Path) -> list[Path]:
    out = root / OUTPUT_DIR
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for d in dashboards():
        path = out / d.file
        path.write_text(render(d))
        paths.append(path)
    return paths


# ---------------------------------------------------------------- checks and the README


_METRIC_NAME = re.compile(r"\b((?:kubetune|ray)_[a-zA-Z0-9_]+)\b")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (kubetune_… and Ray's ray_…)."""
    return set(_METRIC_NAME.findall(expr))


def undefined_metrics(boards: list[dict]) -> list[str]:
    """'<dashboard> / <panel>: <metric>' for every metric a dashboard reads that no code defines."""
    from kubetune.metrics import EXTERNAL_METRICS, definition_of

    problems = []
    for board in boards:
        for panel in board.get("panels", []):
            for target in panel.get("targets", []):
                for name in sorted(metric_names(target.get("expr", ""))):
                    if definition_of(name) is None and name not in EXTERNAL_METRICS:
                        problems.append(f"{board.get('title')} / {panel.get('title')}: {name}")
    return problems


def readme_table() -> str:
    rows = []
    for d in dashboards():
        rows += [f"**{d.title}** (`{OUTPUT_DIR / d.file}`): {d.description}", "",
                 "| panel | metrics | what you read from it |", "| --- | --- | --- |"]
        for p in d.panels:
            names = sorted({n for q in p.queries for n in metric_names(q.expr)})
            rows.append(f"| {p.title} | {', '.join(f'`{n}`' for n in names)} | {p.reads} |")
        rows.append("")
    return "\n".join(rows).rstrip() + "\n"


def main(argv: list[str]) -> int:
    root = Path.cwd()  # the repository root
    if "--check" in argv:
        stale = [d.file for d in dashboards() if not (root / OUTPUT_DIR / d.file).exists()
                 or (root / OUTPUT_DIR / d.file).read_text() != render(d)]
        if stale:
            print(f"out of date: {', '.join(stale)}; run python -m kubetune.dashboards", file=sys.stderr)
            return 1
        return 0
    if "--readme" in argv:
        print(readme_table())
        return 0
    for path in write(root):
        print(path.relative_to(root))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
