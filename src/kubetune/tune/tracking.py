"""What the driver knows while Tune runs: trial counts, the best trial, the reported-metric check.

`ExperimentTracker` is a Ray Tune callback; it turns Tune's trials into plain `TrialRecord`s and
hands a `Snapshot` to its sinks (the progress display of `kubetune run`, the status patcher of a
cluster driver). `ObjectiveStopper` applies stop.maxIterations and objective.goal and stops the
experiment after the first result when the objective metric is missing.
"""

from __future__ import annotations

import math
import os
import re
import sys
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
# Written into a result by ExperimentTracker when the scheduler stops a trial before its last
# iteration; it lives in the trial's last result, so the experiment state keeps it across a resume.
EARLY_STOP_KEY = "kubetune_early_stopped"
UNREAD_KEY = "kubetune_unread_parameters"  # kubetune.trial.UNREAD_KEY (the driver does not import the trial API)
AUTO_RESULT_KEYS |= {EARLY_STOP_KEY, UNREAD_KEY, "_kubetune"}  # the last: kubetune.trial_stats.RESULT_KEY

# Each trial's reported iterations, kept by ExperimentTracker (with the experiment state, so across a
# resume) and written into kubetune-results.json: what Tune's per-trial result.json said, without the
# logger files (off on S3: see driver.LOGGERS_OFF_ENV). Per row: these keys plus the objective.
HISTORY_KEYS = ("training_iteration", "time_total_s", "timestamp", "node_ip", "pid")
HISTORY_ROWS_ENV = "KUBETUNE_HISTORY_ROWS"  # rows kept per trial (the latest); older ones are counted
DEFAULT_HISTORY_ROWS = 500


class TrialState:
    """A trial's state as kubetune shows it (table, kubetune-results.json, status.trials)."""

    PENDING = "pending"  # not started yet (or waiting for a retry, or paused by PBT)
    RUNNING = "running"
    TERMINATED = "terminated"  # finished: its last iteration, the trainable returned, or it reached the goal
    STOPPED = "stopped"  # ended early: by the scheduler (ASHA, HyperBand, median), the goal of another trial or the time budget
    ERROR = "error"  # failed past its retries
    INTERRUPTED = "interrupted"  # was running (or paused) when the run was interrupted; resumes on the next start
    ALL = (PENDING, RUNNING, TERMINATED, STOPPED, ERROR, INTERRUPTED)
    DONE = (TERMINATED, STOPPED, ERROR)  # will not run again


def finite(value: Any) -> float | None:
    """A metric value as a float, or None when it is not a finite number (JSON and the API server refuse inf/NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class TrialRecord:
    id: str
    state: str  # one of TrialState.ALL
    config: dict[str, Any]
    metric: float | None  # the last reported objective, None unless a finite number
    iteration: int
    last_result: dict[str, Any]
    checkpoint: str | None
    # {"type", "message", "traceback": [last lines]} when the trial failed
    error: dict[str, Any] | None = None
    # Ray's pending demand in words, set while the trial waits longer than the pending threshold
    pending_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def best_key(trial: TrialRecord, mode: str) -> tuple:
    """Order of "best": the better objective, then fewer iterations, then the smaller trial id.

    It depends only on each trial's own values, never on the order trials are listed in, so the
    same trials give the same best trial in every run and after every resume.
    """
    if trial.metric is None:
        return (1, 0.0, trial.iteration, trial.id)
    return (0, -trial.metric if mode == "max" else trial.metric, trial.iteration, trial.id)


@dataclass
class Snapshot:
    """The experiment at one moment, as shown to the user and written to the status."""

    metric: str
    mode: str
    budget: int
    trials: list[TrialRecord] = field(default_factory=list)
    elapsed_s: float = 0.0
    interrupted_by: str | None = None  # SIGINT / SIGTERM when the run was interrupted
    warnings: list[str] = field(default_factory=list)  # e.g. sampled parameters the trainable never reads
    # trial id -> its reported iterations (see HISTORY_KEYS); the tracker's own dict, not a copy
    history: dict[str, "TrialHistory"] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        counts = {"total": self.budget, **{state: 0 for state in TrialState.ALL}}
        for t in self.trials:
            counts[t.state] += 1
        # Trials the searcher has not created yet are pending too.
        counts[TrialState.PENDING] += max(0, self.budget - len(self.trials))
        counts["total"] = max(self.budget, len(self.trials))
        return counts

    @property
    def done(self) -> int:
        c = self.counts
        return sum(c[state] for state in TrialState.DONE)

    @property
    def best(self) -> TrialRecord | None:
        """The best trial among those that reported a finite objective and did not fail (see best_key)."""
        scored = [t for t in self.trials if t.metric is not None and t.state != TrialState.ERROR]
        return min(scored, key=lambda t: best_key(t, self.mode)) if scored else None

    def errors(self) -> list[tuple[str, list[str]]]:
        """Errored trials grouped by error ("Type: message"), largest group first."""
        groups: dict[str, list[str]] = {}
        for t in self.trials:
            if t.state == TrialState.ERROR:
                err = t.error or {}
                text = f"{err.get('type', 'Error')}: {err.get('message', '')}".rstrip(": ")
                groups.setdefault(text, []).append(t.id)
        return sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))


@dataclass
class TrialHistory:
    """One trial's reported iterations in order, as they arrived: a trial restarted from an older
    checkpoint (after a fault) reports some iterations again, and both rows stay."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    dropped: int = 0  # older rows left out to stay within the row limit

    def add(self, row: dict[str, Any], limit: int) -> None:
        self.rows.append(row)
        if len(self.rows) > limit:
            excess = len(self.rows) - limit
            del self.rows[:excess]
            self.dropped += excess


def history_row(result: dict[str, Any], metric: str) -> dict[str, Any]:
    """The part of a result a trial's history keeps: HISTORY_KEYS and the objective (inf/NaN as text)."""
    row = {key: result[key] for key in HISTORY_KEYS if key in result}
    if metric in result and _jsonable(result[metric]):  # a result without the objective still counts
        row[metric] = _plain(result[metric])
    return row


def _uri(checkpoint: Any, storage_uri_root: str | None, storage_root: str | None) -> str | None:
    """A checkpoint's location as a URI the user can open (s3://... or a local path)."""
    if checkpoint is None:
        return None
    path = checkpoint.path
    if storage_uri_root and storage_root and path.startswith(storage_root.rstrip("/")):
        return storage_uri_root.rstrip("/") + path[len(storage_root.rstrip("/")):]
    return path


def trial_state(trial: Any, interrupted: bool = False) -> str:
    """Ray's status plus what the last result says -> a TrialState.

    Ray marks every trial TERMINATED when an experiment stops (interrupted, goal, time budget), and a
    trial stopped by the scheduler looks like a finished one. A trial really ended when its last result
    says `done`; the scheduler's early stops carry EARLY_STOP_KEY.
    """
    status = trial.status
    result = trial.last_result or {}
    iteration = int(result.get("training_iteration", 0) or 0)
    if status == "ERROR":
        return TrialState.ERROR
    if status == "TERMINATED":
        if result.get("done"):
            return TrialState.STOPPED if result.get(EARLY_STOP_KEY) else TrialState.TERMINATED
        if interrupted:  # stopped by the interrupt: the saved state still has it running or pending
            return TrialState.INTERRUPTED if iteration else TrialState.PENDING
        return TrialState.STOPPED
    if interrupted and (status in ("RUNNING", "PAUSED") or iteration):
        return TrialState.INTERRUPTED
    return TrialState.RUNNING if status == "RUNNING" else TrialState.PENDING


_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|Failure)\w*)(?::\s?(.*))?$")


def parse_error_text(text: str, keep: int = 8) -> dict[str, Any]:
    """A traceback as text -> {"type", "message", "traceback"}: the last exception line and the lines before it."""
    lines = [line.rstrip() for line in text.splitlines()
             if line.strip(" ^~") and not line.startswith(("Failure # ", "ray::"))]  # no carets, no Ray process titles
    for i in range(len(lines) - 1, -1, -1):
        match = _EXCEPTION_LINE.match(lines[i].strip())
        if match and not lines[i].startswith(" "):
            message = "\n".join([match.group(2) or ""] + [l.strip() for l in lines[i + 1:]]).strip()
            return {"type": match.group(1).rsplit(".", 1)[-1], "message": message[:2000],
                    "traceback": lines[max(0, i - keep):i + 1]}
    return {"type": "Error", "message": (lines[-1] if lines else "the trial failed without a message")[:2000],
            "traceback": lines[-keep:]}


# Ray errors whose words point at Ray's own API, said in the spec's terms (matched in the message).
RAY_ERRORS_IN_SPEC_TERMS = (
    ("Unable to set up cluster storage",
     "spec.storage.uri: the trial's Ray node cannot reach the experiment's local storage (a directory on the "
     "driver's machine), so the trial could not save its checkpoint; on a cluster use s3://bucket/prefix, "
     "which every node reaches"),
)


def in_spec_terms(details: dict[str, Any]) -> dict[str, Any]:
    """`details` with a known Ray message replaced by what to change in the spec (Ray's words stay in the traceback)."""
    for marker, text in RAY_ERRORS_IN_SPEC_TERMS:
        if marker in details.get("message", ""):
            return {**details, "message": text}
    return details


def error_details(trial: Any) -> dict[str, Any]:
    """The exception a trial failed with: type, message and the last lines of its traceback."""
    return in_spec_terms(_error_details(trial))


def _error_details(trial: Any) -> dict[str, Any]:
    exc = None
    pickled = getattr(trial, "pickled_error_file", None)
    if pickled and os.path.exists(pickled):
        try:
            import cloudpickle

            with open(pickled, "rb") as fh:
                exc = cloudpickle.load(fh)
        except Exception:  # an exception class the driver cannot import: fall back to the text
            exc = None
    if exc is not None:
        cause = getattr(exc, "cause", None)
        details = parse_error_text(getattr(exc, "traceback_str", "") or str(exc))
        if isinstance(cause, BaseException):
            details["type"] = type(cause).__name__
            details["message"] = (str(cause).strip() or details["message"])[:2000]
        elif not getattr(exc, "traceback_str", None):
            details["type"] = type(exc).__name__
        return details
    text_file = getattr(trial, "error_file", None)
    if text_file and os.path.exists(text_file):
        with open(text_file, errors="replace") as fh:
            return parse_error_text(fh.read())
    try:
        text = trial.get_error()  # from storage, after a resume
    except Exception:
        text = None
    return parse_error_text(text) if text else {"type": "Error", "message": "the trial failed; Ray kept no error", "traceback": []}


def trial_record(trial: Any, metric: str, parameter_names: Iterable[str], storage: tuple[str, str] | None = None,
                 interrupted: bool = False, error: dict[str, Any] | None = None) -> TrialRecord:
    """A Ray Tune Trial -> TrialRecord (config reduced to the searched parameters)."""
    result = dict(trial.last_result or {})
    names = list(parameter_names)
    config = {k: trial.config.get(k) for k in names if k in trial.config} if names else dict(trial.config)
    checkpoint = getattr(trial, "checkpoint", None)
    uri_root, root = storage or (None, None)
    state = trial_state(trial, interrupted)
    if state == TrialState.ERROR and error is None:
        error = error_details(trial)
    return TrialRecord(
        id=trial.trial_id,
        state=state,
        config={k: _plain(v) for k, v in config.items()},
        metric=finite(result.get(metric)),
        iteration=int(result.get("training_iteration", 0) or 0),
        last_result={k: _plain(v) for k, v in result.items() if k not in ("config", EARLY_STOP_KEY) and _jsonable(v)},
        checkpoint=_uri(checkpoint, uri_root, root),
        error=error if state == TrialState.ERROR else None,
    )


def _jsonable(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool, type(None)))


def _plain(value: Any) -> Any:
    """inf and NaN as the strings "inf", "-inf", "nan": valid JSON, and the value is not lost."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def unread_warning(unread: list[str], missing: list[str]) -> str:
    """spec.parameters the trainable did not read in its first iteration (with the keys it looked for instead)."""
    if not unread:
        return ""
    names = ", ".join(unread)
    text = (f"spec.parameters: the trainable did not read {names} from its config by its first result, "
            f"so searching over {'them' if len(unread) > 1 else 'it'} changes nothing")
    if missing:
        text += f"; it looked for {', '.join(missing)}, which the config does not have"
        close = [f"{m} -> {u}" for m in missing for u in unread if _similar(m, u)]
        if close:
            text += f" (rename: {', '.join(close)})"
    return text


def _similar(a: str, b: str) -> bool:
    import difflib

    norm = lambda s: s.replace("_", "").replace("-", "").lower()  # noqa: E731
    return norm(a) == norm(b) or difflib.SequenceMatcher(None, a.lower(), b.lower()).ratio() > 0.8


PENDING_ENV = "KUBETUNE_PENDING_REPORT_SECONDS"
DEFAULT_PENDING_S = 60.0


def _resources_text(resources: dict[str, float]) -> str:
    """{"CPU": 0.5, "GPU": 1, "memory": 2**31} -> "0.5 CPU, 1 GPU, 2 GiB memory" (Ray's internal keys left out)."""
    parts = []
    for key, value in resources.items():
        if key.startswith(("node:", "bundle_group", "accelerator_type")) or key == "object_store_memory" or "_group_" in key:
            continue
        if key == "memory":
            parts.append(f"{value / 2**30:.3g} GiB memory")
        else:
            parts.append(f"{value:g} {key}")
    return ", ".join(parts) or "nothing"


def pending_demand_text() -> str | None:
    """What Ray cannot place right now, in words, with what is free (None when nothing waits).

    The same demand `ray status` lists under "Pending Demands", read from the GCS (a few ms).
    """
    import ray

    try:
        from ray.autoscaler.v2.sdk import get_cluster_status

        demands = get_cluster_status(ray.get_runtime_context().gcs_address).resource_demands
        free, total = ray.available_resources(), ray.cluster_resources()
    except Exception:  # an older or remote GCS without the autoscaler state: say nothing rather than guess
        return None
    waiting = []
    for demand in demands.ray_task_actor_demand:
        waiting += [f"{b.count} x ({_resources_text(b.bundle)})" for b in demand.bundles_by_count]
    for demand in demands.placement_group_demand:
        bundles = " + ".join(f"{b.count} x ({_resources_text(b.bundle)})" for b in demand.bundles_by_count)
        waiting.append(f"[{bundles}]" if len(demand.bundles_by_count) > 1 else bundles)
    if not waiting:
        return None
    shown = ", ".join(waiting[:4]) + (f" and {len(waiting) - 4} more" if len(waiting) > 4 else "")
    have = _resources_text({k: total[k] for k in ("CPU", "GPU") if k in total})
    free_text = _resources_text({k: free.get(k, 0.0) for k in ("CPU", "GPU") if k in total})
    return f"Ray cannot place {shown} yet; free: {free_text} of {have}"


def _save_state_at_next_step() -> None:
    """Make Tune save (and upload) the experiment state at its next step, whatever its period.

    The state is saved at most every TUNE_GLOBAL_CHECKPOINT_S seconds; a trial that just finished must
    not wait for that, or a driver killed meanwhile would run it again. Callbacks are not given the
    controller, so it is found among the callers (TuneController.step).
    """
    frame = sys._getframe(1)
    for _ in range(8):
        frame = frame.f_back
        if frame is None:
            return
        manager = getattr(frame.f_locals.get("self"), "_checkpoint_manager", None)
        if manager is not None and hasattr(manager, "_should_force_sync_up"):
            manager._should_force_sync_up = True
            return


def _forget_saved_json(trial: Any) -> None:
    """Make the next experiment-state save write the trial's last result as it is now.

    When a function trainable returns, Tune adds `done` to the trial's last result in place, which
    does not clear the JSON that Ray cached for the trial's run metadata at an earlier save; the final
    save then kept the result without `done`, and the finished trial came back from a resume as
    stopped early (and was counted so).
    """
    metadata = getattr(trial, "run_metadata", None)
    if metadata is not None and hasattr(metadata, "invalidate_cache"):
        metadata.invalidate_cache()


class ExperimentTracker(Callback):
    """Keeps a Snapshot of the experiment and notifies sinks (at most every `interval_s`).

    This is the one place where trial state changes and results are seen: `sinks` get every
    Snapshot (progress display, status patcher, metrics).
    """

    def __init__(
        self,
        metric: str,
        mode: str,
        budget: int,
        parameter_names: list[str],
        storage: tuple[str, str] | None = None,
        sinks: list[Callable[[Snapshot], None]] | None = None,
        interval_s: float = 0.5,
        finish_at: int | None = None,
        stopper: "ObjectiveStopper | None" = None,
    ):
        self.metric, self.mode, self.budget = metric, mode, budget
        self.parameter_names = parameter_names
        self.storage = storage
        self.sinks = sinks or []
        self.interval_s = interval_s
        self.finish_at = finish_at  # the iteration at which a trial has finished (stop.maxIterations, maxT)
        self.stopper = stopper
        self.interrupted_by: str | None = None  # set by the driver when a signal stops the run
        self._errors: dict[str, dict[str, Any]] = {}
        self._stop_sent = False
        self._save_due = False  # a trial finished or failed: the state is saved at the next step, whatever its period
        self.warnings: list[str] = []
        # A trial waiting longer than this is reported with Ray's pending demand (KUBETUNE_PENDING_REPORT_SECONDS).
        self.pending_after_s = float(os.environ.get(PENDING_ENV) or DEFAULT_PENDING_S)
        # trial id -> (status, since when): pending, or running without a result (a DDP trial's workers)
        self._waiting_since: dict[str, tuple[str, float]] = {}
        self._pending_reasons: dict[str, str] = {}
        self._demand_checked = float("-inf")
        self._demand_text: str | None = None
        self._last_emit = 0.0
        self._start = time.monotonic()
        self.history: dict[str, TrialHistory] = {}
        self.history_rows = int(os.environ.get(HISTORY_ROWS_ENV) or DEFAULT_HISTORY_ROWS)
        self.snapshot = Snapshot(metric, mode, budget, history=self.history)

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its RunConfig into the experiment; the sinks (a terminal, an API client) stay out.
        state = dict(self.__dict__)
        state["sinks"] = []
        state["stopper"] = None
        return state

    # Tune saves a callback's get_state() with the experiment state (same throttle, same upload) and
    # hands it back through set_state() on a resume: the history outlives a killed driver.
    def get_state(self) -> dict[str, Any] | None:
        if not self.history and not self.warnings:
            return None
        return {"history": {i: (h.rows, h.dropped) for i, h in self.history.items()},
                "warnings": list(self.warnings)}

    def set_state(self, state: dict[str, Any]) -> None:
        for trial_id, (rows, dropped) in (state.get("history") or {}).items():
            self.history[trial_id] = TrialHistory(list(rows), dropped)
        for text in state.get("warnings") or []:
            self._warn(text)

    def _refresh(self, trials: list[Any], force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_emit < self.interval_s:
            return
        self._last_emit = now
        interrupted = self.interrupted_by is not None
        self._find_waiting(trials, now)
        records = [trial_record(t, self.metric, self.parameter_names, self.storage, interrupted, self._errors.get(t.trial_id))
                   for t in trials]
        for record in records:
            if record.state in (TrialState.PENDING, TrialState.RUNNING):
                record.pending_reason = self._pending_reasons.get(record.id)
        self.snapshot = Snapshot(
            self.metric, self.mode, self.budget,
            records,
            elapsed_s=now - self._start,
            interrupted_by=self.interrupted_by,
            warnings=list(self.warnings),
            history=self.history,
        )
        for sink in self.sinks:
            sink(self.snapshot)

    def _find_waiting(self, trials: list[Any], now: float) -> None:
        """Trials pending, or running without a new result, for longer than pending_after_s get Ray's
        pending demand as their reason (checked at most every 5 s)."""
        waiting = set()
        for t in trials:
            if t.status in ("PENDING", "RUNNING"):
                waiting.add(t.trial_id)
                if self._waiting_since.get(t.trial_id, (None,))[0] != t.status:
                    self._waiting_since[t.trial_id] = (t.status, now)
        for trial_id in list(self._waiting_since):
            if trial_id not in waiting:
                del self._waiting_since[trial_id]
        pending = {t.trial_id for t in trials if t.status == "PENDING"}
        # A running trial's wait is its own (a TorchTrainer's workers) only when no trial is pending.
        candidates = pending or {t.trial_id for t in trials if t.status == "RUNNING"}
        long = [i for i in candidates if now - self._waiting_since.get(i, (None, now))[1] >= self.pending_after_s]
        if not long:
            self._pending_reasons = {}
            return
        if now - self._demand_checked >= 5.0:
            self._demand_checked = now
            self._demand_text = pending_demand_text()
        self._pending_reasons = {i: self._demand_text for i in long} if self._demand_text else {}

    def _mark_early_stop(self, trial: Any, result: dict[str, Any]) -> None:
        """A `done` result the stopper did not ask for, before the last iteration: the scheduler stopped it."""
        if not result.get("done"):
            return
        if self.stopper is not None and trial.trial_id in self.stopper.stopped:
            return
        iteration = int(result.get("training_iteration", 0) or 0)
        if self.finish_at is not None and iteration >= self.finish_at:
            return
        result[EARLY_STOP_KEY] = True

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._waiting_since[trial.trial_id] = (trial.status, time.monotonic())  # a result: it is not waiting
        self._mark_early_stop(trial, result)  # Tune stores this result as the trial's last result next
        self.history.setdefault(trial.trial_id, TrialHistory()).add(history_row(result, self.metric), self.history_rows)
        unread = result.pop(UNREAD_KEY, None)
        if unread:
            self._warn(unread_warning(unread.get("unread", []), unread.get("missing", [])))
        self._refresh(trials, force=bool(unread))

    def _warn(self, text: str) -> None:
        if text and text not in self.warnings:
            self.warnings.append(text)  # the sinks show it (Snapshot.warnings)

    # A trial's start and finish reach the sinks at the next refresh (at most interval_s later): a forced
    # one here ran between one trial's end and the next one's start on the same actor.
    def on_trial_start(self, iteration, trials, trial, **info):
        self._refresh(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        _forget_saved_json(trial)
        self._save_due = True
        self._refresh(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._save_due = True
        self._errors[trial.trial_id] = error_details(trial)
        self._refresh(trials, force=True)

    def request_stop(self, signal_name: str) -> None:
        """A stop signal arrived: the loop stops at its next step; trials still running are interrupted."""
        self.interrupted_by = signal_name

    def on_step_begin(self, iteration, trials, **info):
        if self.interrupted_by is not None and not self._stop_sent:
            from kubetune.tune.signals import stop_tune_loop

            self._stop_sent = stop_tune_loop()

    def on_step_end(self, iteration, trials, **info):
        if self._save_due:
            # Forced at the next step's save, after that step has started the next trial on the
            # finished trial's actor (not before it, in the step where the trial finished).
            self._save_due = False
            _save_state_at_next_step()
        self._refresh(trials)

    def on_experiment_end(self, trials, **info):
        self._refresh(trials, force=True)


_ACTIVE_STOPPER: list["ObjectiveStopper"] = []


def _active_stopper() -> "ObjectiveStopper":
    """What an ObjectiveStopper unpickles to: this process's current one (see ObjectiveStopper.__reduce__)."""
    return _ACTIVE_STOPPER[-1] if _ACTIVE_STOPPER else ObjectiveStopper("", "max", None, None, "none")


class ObjectiveStopper(Stopper):
    """stop.maxIterations, objective.goal (per stop.onGoal) and the reported-metric check.

    Tune pickles its stopper into the experiment state and, on a resume, puts the unpickled one back in
    place of the stopper it was given. An ObjectiveStopper therefore unpickles to the stopper the
    current run activated, so that a changed `stop` section applies on resume.
    """

    def __reduce__(self):
        return (_active_stopper, ())

    def activate(self) -> "ObjectiveStopper":
        _ACTIVE_STOPPER[:] = [self]
        return self

    def __init__(self, metric: str, mode: str, max_iterations: int | None, goal: float | None, on_goal: str):
        self.metric, self.mode = metric, mode
        self.max_iterations, self.goal, self.on_goal = max_iterations, goal, on_goal
        self.missing_metric: list[str] | None = None  # what was reported instead, when the metric is missing
        self.goal_reached_by: str | None = None
        self.stopped: dict[str, str] = {}  # trial id -> why this stopper ended it (a finish, not an early stop)

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        reason = self._reason(trial_id, result)
        if reason:
            self.stopped[trial_id] = reason
        return reason is not None

    def _reason(self, trial_id: str, result: dict[str, Any]) -> str | None:
        if not self.metric:  # a placeholder unpickled outside a run
            return None
        if self.metric not in result:
            if self.missing_metric is None:
                self.missing_metric = sorted(k for k in result if k not in AUTO_RESULT_KEYS)
            return "missing-metric"
        if self.max_iterations and result.get("training_iteration", 0) >= self.max_iterations:
            return "max-iterations"
        value = finite(result[self.metric])
        if self.goal is not None and self.on_goal != "none" and value is not None:
            reached = value >= self.goal if self.mode == "max" else value <= self.goal
            if reached:
                self.goal_reached_by = self.goal_reached_by or trial_id
                return "goal"
        return None

    def stop_all(self) -> bool:
        return self.missing_metric is not None or (self.on_goal == "experiment" and self.goal_reached_by is not None)
