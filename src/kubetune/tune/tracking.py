"""What the driver knows while Tune runs: trial counts, the best trial, the reported-metric check.

`ExperimentTracker` is a Ray Tune callback; it turns Tune's trials into plain `TrialRecord`s and
hands a `Snapshot` to its sinks (the progress display of `kubetune run`, the status patcher of a
cluster driver). `ObjectiveStopper` applies stop.maxIterations and objective.goal and stops the
experiment after the first result when the objective metric is missing.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

from ray.tune import Callback
from ray.tune.stopper import Stopper

# Keys Tune adds to every result; a trainable "reports" everything else.
AUTO_RESULT_KEYS = {
    "done", "training_iteration", "trial_id", "date", "timestamp", "time_this_iter_s", "time_total_s",
    "pid", "hostname", "node_ip", "config", "time_since_restore", "iterations_since_restore",
    "checkpoint_dir_name", "should_checkpoint", "experiment_tag", "__duplicate__",
}

STATE_NAMES = {"PENDING": "pending", "PAUSED": "pending", "RUNNING": "running", "TERMINATED": "terminated", "ERROR": "error"}


@dataclass
class TrialRecord:
    id: str
    state: str  # pending | running | terminated | error
    config: dict[str, Any]
    metric: float | None
    iteration: int
    last_result: dict[str, Any]
    checkpoint: str | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Snapshot:
    """The experiment at one moment, as shown to the user and written to the status."""

    metric: str
    mode: str
    budget: int
    trials: list[TrialRecord] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        counts = {"total": self.budget, "pending": 0, "running": 0, "terminated": 0, "error": 0}
        for t in self.trials:
            counts[t.state] += 1
        # Trials the searcher has not created yet are pending too.
        counts["pending"] += max(0, self.budget - len(self.trials))
        counts["total"] = max(self.budget, len(self.trials))
        return counts

    @property
    def done(self) -> int:
        c = self.counts
        return c["terminated"] + c["error"]

    @property
    def best(self) -> TrialRecord | None:
        scored = [t for t in self.trials if t.metric is not None and not math.isnan(t.metric)]
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda t: t.metric)


def _uri(checkpoint: Any, storage_uri_root: str | None, storage_root: str | None) -> str | None:
    """A checkpoint's location as a URI the user can open (s3://... or a local path)."""
    if checkpoint is None:
        return None
    path = checkpoint.path
    if storage_uri_root and storage_root and path.startswith(storage_root.rstrip("/")):
        return storage_uri_root.rstrip("/") + path[len(storage_root.rstrip("/")):]
    return path


def trial_record(trial: Any, metric: str, parameter_names: Iterable[str], storage: tuple[str, str] | None = None) -> TrialRecord:
    """A Ray Tune Trial -> TrialRecord (config reduced to the searched parameters)."""
    result = dict(trial.last_result or {})
    names = list(parameter_names)
    config = {k: trial.config.get(k) for k in names if k in trial.config} if names else dict(trial.config)
    value = result.get(metric)
    checkpoint = getattr(trial, "checkpoint", None)
    uri_root, root = storage or (None, None)
    error = None
    if trial.status == "ERROR":
        error = getattr(trial, "error_file", None) or "trial failed"
    return TrialRecord(
        id=trial.trial_id,
        state=STATE_NAMES.get(trial.status, "pending"),
        config=config,
        metric=float(value) if isinstance(value, (int, float)) else None,
        iteration=int(result.get("training_iteration", 0) or 0),
        last_result={k: v for k, v in result.items() if k not in ("config",) and _jsonable(v)},
        checkpoint=_uri(checkpoint, uri_root, root),
        error=error,
    )


def _jsonable(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool, type(None)))


class ExperimentTracker(Callback):
    """Keeps a Snapshot of the experiment and notifies sinks (at most every `interval_s`)."""

    def __init__(
        self,
        metric: str,
        mode: str,
        budget: int,
        parameter_names: list[str],
        storage: tuple[str, str] | None = None,
        sinks: list[Callable[[Snapshot], None]] | None = None,
        interval_s: float = 0.5,
    ):
        self.metric, self.mode, self.budget = metric, mode, budget
        self.parameter_names = parameter_names
        self.storage = storage
        self.sinks = sinks or []
        self.interval_s = interval_s
        self._last_emit = 0.0
        self._start = time.monotonic()
        self.snapshot = Snapshot(metric, mode, budget)

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its RunConfig into the experiment; the sinks (a terminal, an API client) stay out.
        state = dict(self.__dict__)
        state["sinks"] = []
        return state

    def _refresh(self, trials: list[Any], force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_emit < self.interval_s:
            return
        self._last_emit = now
        self.snapshot = Snapshot(
            self.metric, self.mode, self.budget,
            [trial_record(t, self.metric, self.parameter_names, self.storage) for t in trials],
            elapsed_s=now - self._start,
        )
        for sink in self.sinks:
            sink(self.snapshot)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._refresh(trials)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._refresh(trials, force=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._refresh(trials, force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._refresh(trials, force=True)

    def on_step_end(self, iteration, trials, **info):
        self._refresh(trials)

    def on_experiment_end(self, trials, **info):
        self._refresh(trials, force=True)


class ObjectiveStopper(Stopper):
    """stop.maxIterations, objective.goal (per stop.onGoal) and the reported-metric check."""

    def __init__(self, metric: str, mode: str, max_iterations: int | None, goal: float | None, on_goal: str):
        self.metric, self.mode = metric, mode
        self.max_iterations, self.goal, self.on_goal = max_iterations, goal, on_goal
        self.missing_metric: list[str] | None = None  # what was reported instead, when the metric is missing
        self.goal_reached_by: str | None = None

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if self.metric not in result:
            if self.missing_metric is None:
                self.missing_metric = sorted(k for k in result if k not in AUTO_RESULT_KEYS)
            return True
        if self.max_iterations and result.get("training_iteration", 0) >= self.max_iterations:
            return True
        value = result[self.metric]
        if self.goal is not None and self.on_goal != "none" and isinstance(value, (int, float)):
            reached = value >= self.goal if self.mode == "max" else value <= self.goal
            if reached:
                self.goal_reached_by = self.goal_reached_by or trial_id
                return True
        return False

    def stop_all(self) -> bool:
        return self.missing_metric is not None or (self.on_goal == "experiment" and self.goal_reached_by is not None)
