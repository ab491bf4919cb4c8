"""Every `kubetune_…` Prometheus metric, defined once, for the operator, the driver and the trials.

Only `prometheus_client` is imported here, so the operator (no Ray, no torch) and the driver share
the definitions. `DEFINITIONS` is the list the README table, the dashboards' checks and the
label-bound checks are generated from; each label has a declared bound in `LABEL_BOUNDS` (an enum or
a Kubernetes / Ray Tune name pattern), so no series is keyed by a config value, a path or an error.

Trials' metrics (step time, samples/s, GPU memory and utilisation) travel inside the results a trial
already reports to the driver, which exports them here; see the README's "Observability" section
for why that beats a per-node `ray.util.metrics` exporter.

`python -m kubetune.metrics` prints the README's metrics table.
"""

from __future__ import annotations

import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily

# A `_created` series per counter and histogram doubles the series count for a timestamp no panel reads.
disable_created_metrics()

# ---------------------------------------------------------------- label bounds

_K8S_NAME = r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?"
_TRIAL_ID = r"[0-9a-f]{5,16}(_[0-9]{5,})?"

PHASES = ("Pending", "Provisioning", "Running", "Succeeded", "Failed", "Suspended")
# kubetune.tune.tracking.TrialState.ALL (a test keeps them equal; this module does not import Ray)
TRIAL_STATES = ("pending", "running", "terminated", "stopped", "error", "interrupted")
SCHEDULERS = ("fifo", "asha", "hyperband", "medianStopping", "pbt", "pb2")
TRIGGERS = ("create", "resume", "update", "resync", "raycluster", "job", "retry")
CHILD_KINDS = ("ConfigMap", "RayCluster", "Job")
HTTP_VERBS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
API_RESOURCES = ("tuneexperiments", "rayclusters", "jobs", "pods", "configmaps", "secrets",
                 "serviceaccounts", "events", "other")
ERROR_REASONS = ("invalid_spec", "conflict", "not_found", "forbidden", "unauthorized", "invalid",
                 "throttled", "server_error", "api_error", "unreachable", "internal")


@dataclass(frozen=True)
class LabelBound:
    """What values a label may take: a closed list, or a name pattern (one value per object)."""

    description: str
    values: tuple[str, ...] = ()
    pattern: str = ""

    def allows(self, value: str) -> bool:
        if self.values:
            return value in self.values
        return re.fullmatch(self.pattern, value) is not None


LABEL_BOUNDS: dict[str, LabelBound] = {
    "namespace": LabelBound("Kubernetes namespace", pattern=_K8S_NAME),
    "experiment": LabelBound("TuneExperiment name", pattern=_K8S_NAME),
    "trial": LabelBound("Ray Tune trial id (running trials, and finished ones for a while)", pattern=_TRIAL_ID),
    "phase": LabelBound("TuneExperiment phase", PHASES),
    "state": LabelBound("trial state", TRIAL_STATES),
    "scheduler": LabelBound("spec.scheduler.type", SCHEDULERS),
    "trigger": LabelBound("what started a reconcile", TRIGGERS),
    "result": LabelBound("reconcile result", ("ok", "error")),
    "reason": LabelBound("reconcile error class", ERROR_REASONS),
    "kind": LabelBound("child object kind", CHILD_KINDS),
    "verb": LabelBound("HTTP method", HTTP_VERBS),
    "resource": LabelBound("Kubernetes API resource", API_RESOURCES),
}
# Labels Prometheus itself adds to histogram and summary samples.
_SAMPLE_LABELS = {"le", "quantile"}


class UnboundedLabel(ValueError):
    pass


def check_label_value(metric: str, label: str, value: str) -> None:
    """Raise UnboundedLabel unless `value` is within `label`'s declared bound."""
    if label in _SAMPLE_LABELS:
        return
    bound = LABEL_BOUNDS.get(label)
    if bound is None:
        raise UnboundedLabel(f"{metric}: label {label!r} has no declared bound (kubetune.metrics.LABEL_BOUNDS)")
    if not bound.allows(value):
        allowed = ", ".join(bound.values) if bound.values else f"/{bound.pattern}/"
        raise UnboundedLabel(f"{metric}: label {label}={value!r} is outside its bound ({bound.description}: {allowed})")


# ---------------------------------------------------------------- definitions


@dataclass(frozen=True)
class MetricDef:
    name: str  # as exposed, without the _total/_bucket/... sample suffixes
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...]
    component: str  # operator | driver | trial (trials' metrics are exported by the driver)
    buckets: tuple[float, ...] | None = None

    def sample_names(self) -> set[str]:
        if self.kind == "counter":
            return {f"{self.name}_total"}
        if self.kind == "histogram":
            return {f"{self.name}_{s}" for s in ("bucket", "sum", "count")}
        return {self.name}


EXP = ("namespace", "experiment")
TRIAL = ("namespace", "experiment", "trial")
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_STEP_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
_BYTES = tuple(float(2 ** p) for p in range(10, 41, 3))  # 1 KiB .. 1 TiB

DEFINITIONS: tuple[MetricDef, ...] = (
    # -- operator
    MetricDef("kubetune_operator_experiments", "gauge", "TuneExperiments the operator reconciled, by namespace and phase.",
              ("namespace", "phase"), "operator"),
    MetricDef("kubetune_operator_reconciles", "counter", "Reconciles of TuneExperiments, by trigger and result.",
              ("trigger", "result"), "operator"),
    MetricDef("kubetune_operator_reconcile_duration_seconds", "histogram", "Time one reconcile took, by trigger.",
              ("trigger",), "operator", _SECONDS),
    MetricDef("kubetune_operator_reconcile_errors", "counter", "Failed reconciles, by error class.",
              ("reason",), "operator"),
    MetricDef("kubetune_operator_phase_transitions", "counter", "Phase changes made by the operator, by new phase.",
              ("phase",), "operator"),
    MetricDef("kubetune_operator_children_created", "counter", "Child objects the operator created, by kind.",
              ("kind",), "operator"),
    MetricDef("kubetune_operator_children_deleted", "counter", "Child objects the operator deleted, by kind.",
              ("kind",), "operator"),
    MetricDef("kubetune_operator_api_request_duration_seconds", "histogram",
              "Latency of the operator's Kubernetes API requests, by HTTP verb and resource.",
              ("verb", "resource"), "operator", _SECONDS),
    # -- driver
    MetricDef("kubetune_trials", "gauge", "Trials by state, as status.trials counts them (pending includes those not created yet).",
              EXP + ("state",), "driver"),
    MetricDef("kubetune_trials_started", "counter", "Trials started (a restarted trial counts again).", EXP, "driver"),
    MetricDef("kubetune_trials_completed", "counter", "Trials that ended without an error (early stops included).",
              EXP, "driver"),
    MetricDef("kubetune_trials_errored", "counter", "Trials that ended with an error after their retries.", EXP, "driver"),
    MetricDef("kubetune_trials_early_stopped", "counter",
              "Trials the scheduler stopped before their last iteration, by scheduler.", EXP + ("scheduler",), "driver"),
    MetricDef("kubetune_trials_retried", "counter", "Trial failures retried (failure.maxRetries).", EXP, "driver"),
    MetricDef("kubetune_best_objective", "gauge", "The best objective value so far (per objective.mode).", EXP, "driver"),
    MetricDef("kubetune_trial_objective", "gauge",
              "A trial's last objective value; a finished trial's series goes after KUBETUNE_METRICS_TRIAL_TTL seconds.",
              TRIAL, "driver"),
    MetricDef("kubetune_trial_iteration", "gauge",
              "A trial's last reported iteration; a finished trial's series goes after KUBETUNE_METRICS_TRIAL_TTL seconds.",
              TRIAL, "driver"),
    MetricDef("kubetune_results", "counter", "Results reported by trials (rate() gives results per second).", EXP, "driver"),
    MetricDef("kubetune_checkpoint_save_seconds", "histogram",
              "Time a trial took to serialise a checkpoint to local disk.", EXP, "driver", _SECONDS),
    MetricDef("kubetune_checkpoint_upload_seconds", "histogram",
              "Time a trial's report with a checkpoint took, i.e. persisting it to storage.", EXP, "driver", _SECONDS),
    MetricDef("kubetune_checkpoint_size_bytes", "histogram", "Size of each checkpoint a trial saved.",
              EXP, "driver", _BYTES),
    MetricDef("kubetune_experiment_elapsed_seconds", "gauge", "Seconds since this run of the experiment started.",
              EXP, "driver"),
    MetricDef("kubetune_time_budget_used_ratio", "gauge",
              "Share of stop.timeBudgetSeconds used (only when a budget is set).", EXP, "driver"),
    # -- trials (measured in the trial, carried by its results, exported by the driver)
    MetricDef("kubetune_trial_step_seconds", "histogram", "Wall time of one trial iteration.", EXP, "trial", _STEP_SECONDS),
    MetricDef("kubetune_trial_samples_per_second", "gauge",
              "Training samples per second of a trial's last iteration (when the trainable says how many).",
              TRIAL, "trial"),
    MetricDef("kubetune_trial_gpu_memory_bytes", "gauge", "Peak GPU memory a trial's process allocated in its last iteration.",
              TRIAL, "trial"),
    MetricDef("kubetune_trial_gpu_utilization_ratio", "gauge",
              "Utilisation (0-1) of the GPU a trial ran on, sampled at its last report (needs NVML).", TRIAL, "trial"),
)
BY_NAME: dict[str, MetricDef] = {d.name: d for d in DEFINITIONS}

# Metrics the dashboards read that Ray exports itself (each node's metrics-export-port).
EXTERNAL_METRICS: dict[str, str] = {
    "ray_node_gpus_utilization": "Ray node metrics: GPU utilisation per GPU, in percent",
    "ray_node_gram_used": "Ray node metrics: GPU memory used per GPU, in MB",
}


def definition_of(sample_name: str) -> MetricDef | None:
    """The definition a sample name (e.g. kubetune_results_total, …_bucket) belongs to."""
    for d in DEFINITIONS:
        if sample_name == d.name or sample_name in d.sample_names():
            return d
    return None


def label_problems(definitions: tuple[MetricDef, ...] | list[MetricDef] = DEFINITIONS) -> list[str]:
    """Metrics whose labels have no declared bound (a config value, a path or an error text would be one)."""
    problems = []
    for d in definitions:
        if not d.name.startswith("kubetune_"):
            problems.append(f"{d.name}: not named kubetune_…")
        for label in d.labels:
            if label not in LABEL_BOUNDS:
                problems.append(f"{d.name}: label {label!r} has no declared bound")
    return problems


def sample_problems(exposition: str) -> list[str]:
    """Problems in a /metrics text: kubetune_ samples of undefined metrics, or label values outside their bounds."""
    from prometheus_client.parser import text_string_to_metric_families

    problems = []
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if not sample.name.startswith("kubetune_"):
                continue
            if definition_of(sample.name) is None:
                problems.append(f"{sample.name}: no definition in kubetune.metrics")
                continue
            for label, value in sample.labels.items():
                try:
                    check_label_value(sample.name, label, value)
                except UnboundedLabel as exc:
                    problems.append(str(exc))
    return problems


def readme_table() -> str:
    """The metrics table of the README (tests/test_metrics.py keeps it in sync)."""
    rows = ["| metric | type | labels | from | meaning |", "| --- | --- | --- | --- | --- |"]
    for d in DEFINITIONS:
        exposed = f"{d.name}_total" if d.kind == "counter" else d.name
        rows.append(f"| `{exposed}` | {d.kind} | {', '.join(d.labels)} | {d.component} | {d.help} |")
    return "\n".join(rows)


# ---------------------------------------------------------------- the metric objects

# Trials' last values, dropped a while after the trial ends (bounded cardinality).
_TRIAL_GAUGES = ("kubetune_trial_objective", "kubetune_trial_iteration", "kubetune_trial_samples_per_second",
                 "kubetune_trial_gpu_memory_bytes", "kubetune_trial_gpu_utilization_ratio")
_OPERATOR_EXPERIMENTS = "kubetune_operator_experiments"


def _make(d: MetricDef, registry: CollectorRegistry):
    if d.kind == "counter":
        return Counter(d.name, d.help, d.labels, registry=registry)
    if d.kind == "histogram":
        return Histogram(d.name, d.help, d.labels, buckets=d.buckets, registry=registry)
    return Gauge(d.name, d.help, d.labels, registry=registry)


class TrialSeries:
    """A collector for the per-trial gauges: running trials, and finished ones for `ttl_s` seconds."""

    def __init__(self, ttl_s: float = 300.0, clock: Callable[[], float] = time.monotonic):
        self.ttl_s, self.clock = ttl_s, clock
        self._lock = threading.Lock()
        # (namespace, experiment, trial) -> {"values": {metric: value}, "finished": time or None}
        self._trials: dict[tuple[str, str, str], dict[str, Any]] = {}

    def set(self, key: tuple[str, str, str], **values: float | None) -> None:
        with self._lock:
            entry = self._trials.setdefault(key, {"values": {}, "finished": None})
            entry["finished"] = None
            entry["values"].update({f"kubetune_trial_{k}": float(v) for k, v in values.items() if v is not None})

    def finish(self, key: tuple[str, str, str]) -> None:
        with self._lock:
            if key in self._trials and self._trials[key]["finished"] is None:
                self._trials[key]["finished"] = self.clock()

    def prune(self) -> None:
        now = self.clock()
        with self._lock:
            for key in [k for k, e in self._trials.items() if e["finished"] is not None and now - e["finished"] >= self.ttl_s]:
                del self._trials[key]

    def keys(self) -> list[tuple[str, str, str]]:
        self.prune()
        with self._lock:
            return list(self._trials)

    def describe(self):
        return [GaugeMetricFamily(n, BY_NAME[n].help, labels=TRIAL) for n in _TRIAL_GAUGES]

    def collect(self):
        self.prune()
        families = {n: GaugeMetricFamily(n, BY_NAME[n].help, labels=TRIAL) for n in _TRIAL_GAUGES}
        with self._lock:
            for key, entry in self._trials.items():
                for name, value in entry["values"].items():
                    families[name].add_metric(list(key), value)
        return list(families.values())


class ExperimentPhases:
    """A collector for kubetune_operator_experiments: the last phase the operator saw per experiment."""

    def __init__(self):
        self._lock = threading.Lock()
        self._phase: dict[tuple[str, str], str] = {}

    def observe(self, namespace: str, name: str, phase: str | None) -> None:
        with self._lock:
            if phase:
                self._phase[(namespace, name)] = phase
            else:
                self._phase.pop((namespace, name), None)

    def describe(self):
        return [GaugeMetricFamily(_OPERATOR_EXPERIMENTS, BY_NAME[_OPERATOR_EXPERIMENTS].help, labels=["namespace", "phase"])]

    def collect(self):
        family = GaugeMetricFamily(_OPERATOR_EXPERIMENTS, BY_NAME[_OPERATOR_EXPERIMENTS].help, labels=["namespace", "phase"])
        with self._lock:
            counts: dict[tuple[str, str], int] = {}
            for (namespace, _), phase in self._phase.items():
                counts[(namespace, phase)] = counts.get((namespace, phase), 0) + 1
        for (namespace, phase), n in sorted(counts.items()):
            family.add_metric([namespace, phase], n)
        return [family]


class Metrics:
    """The metric objects of one registry: the process-wide `METRICS`, or a test's own."""

    def __init__(self, registry: CollectorRegistry = REGISTRY, trial_ttl_s: float = 300.0):
        self.registry = registry
        self.trials = TrialSeries(trial_ttl_s)
        self.experiments = ExperimentPhases()
        registry.register(self.trials)
        registry.register(self.experiments)
        self._objects = {d.name: _make(d, registry) for d in DEFINITIONS
                         if d.name not in _TRIAL_GAUGES and d.name != _OPERATOR_EXPERIMENTS}

    def __getitem__(self, name: str):
        return self._objects[name]


def trial_ttl_from_env(environ: Mapping[str, str] | None = None) -> float:
    raw = (environ if environ is not None else os.environ).get("KUBETUNE_METRICS_TRIAL_TTL", "300")
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise ValueError(f"KUBETUNE_METRICS_TRIAL_TTL: {raw!r} is not a number of seconds") from None


METRICS = Metrics(trial_ttl_s=trial_ttl_from_env())


# ---------------------------------------------------------------- operator helpers


def status_reason(status: int) -> str:
    """An HTTP status from the API server as a bounded error class."""
    return {409: "conflict", 404: "not_found", 403: "forbidden", 401: "unauthorized", 422: "invalid",
            400: "invalid", 429: "throttled"}.get(status, "server_error" if status >= 500 else "api_error")


def init_operator_series(metrics: Metrics = METRICS) -> None:
    """Every operator counter at 0 for each value of its (closed) labels, at start-up.

    A counter first scraped at 1 shows no increase to rate(); starting from 0 it does. Only the
    operator calls this, so the driver's endpoint does not carry the operator's zeros.
    """
    bounds = {label: LABEL_BOUNDS[label].values for d in DEFINITIONS for label in d.labels}
    for d in DEFINITIONS:
        if d.component != "operator" or d.kind != "counter":
            continue
        combos: list[tuple[str, ...]] = [()]
        for label in d.labels:
            combos = [c + (v,) for c in combos for v in bounds[label]]
        for combo in combos:
            metrics[d.name].labels(*combo)


def error_reason(exc: BaseException) -> str:
    """A bounded class for a reconcile error (never its text: that may hold names or paths)."""
    status = getattr(exc, "status", None)
    if isinstance(status, int) and type(exc).__name__ in ("ApiException", "Refused"):
        return status_reason(status)
    if isinstance(exc, (ConnectionError, TimeoutError)) or type(exc).__module__.startswith("urllib3"):
        return "unreachable"
    return "internal"


@contextmanager
def reconciling(trigger: str, metrics: Metrics = METRICS) -> Iterator[None]:
    """Time one reconcile and count it, with its error class when it raises."""
    start = time.perf_counter()
    try:
        yield
    except BaseException as exc:
        metrics["kubetune_operator_reconciles"].labels(trigger, "error").inc()
        metrics["kubetune_operator_reconcile_errors"].labels(error_reason(exc)).inc()
        raise
    else:
        metrics["kubetune_operator_reconciles"].labels(trigger, "ok").inc()
    finally:
        metrics["kubetune_operator_reconcile_duration_seconds"].labels(trigger).observe(time.perf_counter() - start)


def api_resource(url: str) -> str:
    """/apis/ray.io/v1/namespaces/x/rayclusters/y?… -> "rayclusters" (others: "other")."""
    path = url.split("?", 1)[0]
    parts = [p for p in path.split("/") if p]
    for i, part in enumerate(parts):
        if part == "namespaces" and i + 2 < len(parts):
            candidate = parts[i + 2]
            break
    else:
        candidate = next((p for p in reversed(parts) if p in API_RESOURCES), "other")
    return candidate if candidate in API_RESOURCES else "other"


def instrument_api_client(api_client: Any, metrics: Metrics = METRICS) -> Any:
    """Time every HTTP request of a kubernetes ApiClient (its rest_client.request), by verb and resource."""
    rest = api_client.rest_client
    if getattr(rest, "_kubetune_timed", False):
        return api_client
    original = rest.request
    histogram = metrics["kubetune_operator_api_request_duration_seconds"]

    def request(method, url, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(method, url, *args, **kwargs)
        finally:
            verb = method.upper() if method.upper() in HTTP_VERBS else "GET"
            histogram.labels(verb, api_resource(url)).observe(time.perf_counter() - start)

    rest.request = request
    rest._kubetune_timed = True
    return api_client


# ---------------------------------------------------------------- serving

# The driver pod's /metrics port (a container port named `metrics`), also `kubetune run`'s default.
DRIVER_METRICS_PORT = 9450
DRIVER_METRICS_PORT_ENV = "KUBETUNE_DRIVER_METRICS_PORT"


def driver_metrics_port(environ: Mapping[str, str] | None = None) -> int:
    """KUBETUNE_DRIVER_METRICS_PORT (0: don't serve), else 9450."""
    raw = (environ if environ is not None else os.environ).get(DRIVER_METRICS_PORT_ENV, "").strip()
    if not raw:
        return DRIVER_METRICS_PORT
    if not raw.isdigit() or int(raw) > 65535:
        raise ValueError(f"{DRIVER_METRICS_PORT_ENV}: {raw!r} is not a port number (0-65535; 0 turns metrics off)")
    return int(raw)


def serve(port: int, address: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY):
    """Serve /metrics in a thread; returns (server, port). Port 0 picks a free one."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=address, registry=registry)
    return server, server.server_address[1]


if __name__ == "__main__":
    print(readme_table())
