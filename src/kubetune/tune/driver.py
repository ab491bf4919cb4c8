"""The driver: run (or resume) one TuneExperiment on Ray and write its results to storage.

The same code runs behind `kubetune run` (an embedded Ray on this machine) and `kubetune driver`
(the driver pod on a cluster, connected to the RayCluster).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

from kubetune.api import exitcodes
from kubetune.api.spec import TuneExperiment, TuneExperimentSpec
from kubetune.tune import trial_actor_env
from kubetune.tune.signals import StopSignals, exit_code
from kubetune.tune.storage import ResolvedStorage, check_storage, resolve_storage
from kubetune.tune.tracking import (ExperimentTracker, ObjectiveStopper, Snapshot, TrialHistory, TrialRecord, TrialState,
                                    best_key)

log = logging.getLogger("kubetune.driver")

RESULTS_FILE = "kubetune-results.json"
BEST_FILE = "kubetune-best-trial.json"

# Environment for Ray Tune, set before Ray starts unless the user set it.
RAY_ENV_DEFAULTS = {
    # kubetune checks the objective metric itself, with a message naming the field.
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    # Save the experiment state at most every 5 s (Ray's default: auto, >= 10 s), and at once after a
    # trial finishes or fails (ExperimentTracker forces it), so a driver killed at any point resumes with
    # every finished trial. Saving after every step made 200-300 S3 requests a second (issue #10).
    "TUNE_GLOBAL_CHECKPOINT_S": "5",
    "RAY_AIR_NEW_OUTPUT": "0",
    # A reused actor waits this long for the previous trial's thread (a DDP trial's clean-up takes
    # more than Ray's 2 s; past it Tune starts a fresh actor and logs a warning).
    "TUNE_FUNCTION_THREAD_TIMEOUT_S": "10",
    "RAY_DEDUP_LOGS": "0",
    **trial_actor_env.ENV_DEFAULTS,
}
# Always: kubetune handles SIGINT itself, like SIGTERM (kubetune.tune.signals).
RAY_ENV_FORCED = {"TUNE_DISABLE_SIGINT_HANDLER": "1"}

BEST_TRIAL_RULE = (
    "the best objective among trials that reported a finite value and did not fail; "
    "ties: fewer iterations, then the smaller trial id"
)


@dataclass
class Outcome:
    """How a run ended: succeeded, failed or interrupted; what was found; where it is stored."""

    status: str  # succeeded | failed | interrupted
    message: str
    snapshot: Snapshot
    experiment_uri: str
    restored: bool
    results_uri: str | None = None
    exit_code: int = exitcodes.OK

    @property
    def best(self) -> TrialRecord | None:
        return self.snapshot.best


def grid_size(spec: TuneExperimentSpec) -> int:
    size = 1
    for param in spec.parameters.values():
        if param.kind == "grid":
            size *= len(param.body)
        elif spec.search.algorithm == "grid":
            size *= len(param.body) if param.kind == "choice" else len(param.body.values())
    return size


def trial_budget(spec: TuneExperimentSpec) -> int:
    return spec.search.num_samples * grid_size(spec)


def importable_cwd() -> None:
    """Make modules in the working directory importable here and in Ray's workers, as with `python -m`."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if cwd not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([cwd, *parts])


class _TuneInterruptNoise(logging.Filter):
    """Drop Tune's own lines about an interrupt: kubetune says what happened and how to resume."""

    NOISE = ("Stop signal received", "has been interrupted", "Trials did not complete", "Tuner.restore(")

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(n in text for n in self.NOISE)


class _TempFileSyncRace(logging.Filter):
    """Drop Ray's warning about a sync that raced an atomic write of the experiment state.

    Saving the state after every step (TUNE_GLOBAL_CHECKPOINT_S=0) means a background upload can
    list a `-tmp-` file that the next save renames away; that upload fails, the next one copies the
    complete state. The warning is a traceback about a file nobody needs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("Last sync command failed" in text and "FileNotFoundError" in text and "-tmp-" in text)


_FILTERS = {"ray.train._internal.syncer": _TempFileSyncRace(), "ray.tune.tune": _TuneInterruptNoise()}


def configure_logging(verbose: bool = False) -> None:
    """Ray's, Tune's and the searchers' own log lines only with --verbose: kubetune reports what matters
    (progress, errors in words, pending trials), and their lines (some with raw colour codes) would
    bury it. With --verbose they come through at INFO."""
    for name, flt in _FILTERS.items():
        if flt not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(flt)
    level = logging.INFO if verbose else logging.ERROR
    for name in ("ray", "ray.tune", "ray.train", "ray.data"):
        logging.getLogger(name).setLevel(level)
    for name in ("optuna", "hyperopt", "bayes_opt", "ax"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    if "optuna" in sys.modules:  # optuna sets its own level when it is first imported (by the searcher)
        sys.modules["optuna"].logging.set_verbosity(logging.INFO if verbose else logging.WARNING)
    # Ray announces its (default, kept) token authentication on every start; it is not news to a user.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.INFO if verbose else logging.ERROR)


def ensure_ray(address: str | None = None, num_cpus: int | None = None, log_to_driver: bool = False,
               verbose: bool = False) -> bool:
    """Connect to `address` (a cluster) or start an embedded Ray; True if this call started it."""
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.update(RAY_ENV_FORCED)
    import ray

    configure_logging(verbose)
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    level = logging.INFO if verbose else logging.ERROR
    kwargs: dict[str, Any] = {"logging_level": level, "log_to_driver": log_to_driver or verbose}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)
        trial_actor_env.remember_started_ray()
    return True


def build_tune_config(spec: TuneExperimentSpec):
    from ray import tune

    from kubetune.tune.space import build_scheduler, build_searcher

    return tune.TuneConfig(
        metric=spec.objective.metric,
        mode=spec.objective.mode,
        search_alg=build_searcher(spec),
        scheduler=build_scheduler(spec),
        num_samples=spec.search.num_samples,
        time_budget_s=spec.stop.time_budget_seconds,
        # Reused actors start trials in milliseconds instead of seconds; trainable.isolated()
        # keeps one trial's process-level state from reaching the next.
        reuse_actors=True,
        trial_name_creator=lambda t: f"{t.trainable_name}_{t.trial_id}",
        trial_dirname_creator=lambda t: f"{t.trainable_name}_{t.trial_id}",
    )


def build_run_config(spec: TuneExperimentSpec, name: str, storage: ResolvedStorage, callbacks: list, stopper):
    from ray import tune

    ckpt = spec.checkpoint
    return tune.RunConfig(
        name=name,
        storage_path=storage.root,
        storage_filesystem=storage.filesystem,
        stop=stopper,
        callbacks=callbacks,
        verbose=0,
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=ckpt.num_to_keep,
            checkpoint_score_attribute=spec.objective.metric if ckpt.num_to_keep else None,
            checkpoint_score_order=spec.objective.mode,
        ),
        failure_config=tune.FailureConfig(max_failures=spec.failure.max_retries),
    )


def build_stopper(spec: TuneExperimentSpec) -> ObjectiveStopper:
    return ObjectiveStopper(
        metric=spec.objective.metric,
        mode=spec.objective.mode,
        max_iterations=spec.stop.max_iterations,
        goal=spec.objective.goal,
        on_goal=spec.stop.on_goal,
    )


def run_experiment(
    experiment: TuneExperiment,
    storage_override: str | None = None,
    sinks: list[Callable[[Snapshot], None]] | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None,
    verbose: bool = False,
    metrics: bool = True,
) -> Outcome:
    """Run the experiment to the end, or resume it when its storage already holds it.

    Before any trial starts it raises SpecError (bad --storage, entrypoint, a trial that can never be
    placed), StorageError (unreachable storage) or signals.Interrupted (SIGINT/SIGTERM). A signal while
    Tune runs ends the run with an "interrupted" Outcome, the state and results saved.
    """
    from ray import tune

    from kubetune.tune.space import build_param_space, build_scheduler, max_iterations
    from kubetune.tune.telemetry import observer_for
    from kubetune.tune.trainable import build_trainable, import_entrypoint
    from kubetune.tune.tune_loggers import tune_loggers

    if storage_override:
        experiment = with_storage_uri(experiment, storage_override)
    spec, name = experiment.spec, experiment.metadata.name
    with StopSignals() as signals:
        storage = resolve_storage(spec.storage)
        check_storage(storage)
        importable_cwd()
        import_entrypoint(spec.trainable.entrypoint)
        ensure_ray(address=address, num_cpus=num_cpus, verbose=verbose)
        signals.install()  # again: ray.init() replaced the SIGTERM handler
        check_feasible(spec, cluster=bool(address or os.environ.get("RAY_ADDRESS")))

        trainable = build_trainable(spec)
        param_space = build_param_space(spec)
        stopper = build_stopper(spec).activate()
        tracker = ExperimentTracker(
            metric=spec.objective.metric,
            mode=spec.objective.mode,
            budget=trial_budget(spec),
            parameter_names=list(spec.parameters),
            storage=(storage.uri, storage.root),
            sinks=list(sinks or []),
            # where a trial has finished: stop.maxIterations, else the scheduler's maxT (ASHA defaults it)
            finish_at=max_iterations(spec) or getattr(build_scheduler(spec), "_max_t", None),
            stopper=stopper,
        )
        signals.on_signal = tracker.request_stop
        loggers_off = os.environ.get(LOGGERS_OFF_ENV, "1" if storage.is_s3 else "0") == "1"
        observer = observer_for(experiment, storage, tracker.budget, export=metrics)
        callbacks = [tracker, observer, *tune_loggers(loggers_off)]
        experiment_path = storage.experiment_path(name)
        experiment_uri = storage.experiment_uri(name)
        restored = tune.Tuner.can_restore(experiment_path, storage_filesystem=storage.filesystem)
        signals.phase = "tuning"
        if restored:
            tuner = tune.Tuner.restore(
                experiment_path,
                trainable=trainable,
                resume_unfinished=True,
                restart_errored=True,
                param_space=param_space,
                storage_filesystem=storage.filesystem,
            )
            # Tune restores the RunConfig and search algorithm it pickled: this run's display and
            # stopper replace the old ones (the pickled stopper unpickles to the active one, see
            # ObjectiveStopper), and a raised numSamples extends the search.
            local = tuner._local_tuner
            local.get_run_config().callbacks = callbacks
            local.get_run_config().stop = stopper
            local._tune_config.search_alg.extend_to = tracker.budget
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=build_tune_config(spec),
                run_config=build_run_config(spec, name, storage, callbacks, stopper),
            )
        if on_start:
            on_start({"experiment_uri": experiment_uri, "restored": restored, "budget": tracker.budget})
        log.info("%s experiment %s in %s", "resuming" if restored else "starting", name, experiment_uri)
        configure_logging(verbose)  # again: the searcher's library is imported by now
        with (_env_default(LOGGERS_OFF_ENV, "1" if storage.is_s3 else None), _no_result_dataframes(),
              trial_actor_env.trial_actors_without_runtime_env()):
            tuner.fit()  # a signal that came before the loop stops it at its first step, after saving
        signals.phase = "after"
        # The tracker's last snapshot was taken at on_experiment_end, with every trial's final state.
        snapshot = tracker.snapshot
        snapshot.interrupted_by = signals.name
        outcome = _conclude(spec, snapshot, stopper, experiment_uri, restored)
        _write_results(storage, name, spec, outcome)
        outcome.results_uri = f"{experiment_uri}/{RESULTS_FILE}"
        observer.wait_for_plot()
        return outcome


# Tune's per-trial logger files (result.json, progress.csv, params.*, TensorBoard events) live in the
# experiment folder, and every experiment-state save uploads that whole folder again: on S3 they made
# 51 requests per trial-iteration on the quickstart (bench/). kubetune-results.json keeps every trial's
# last result and its history (each reported iteration, tracking.HISTORY_KEYS), so on S3 they are off
# unless TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=0 asks for them.
LOGGERS_OFF_ENV = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"


@contextlib.contextmanager
def _no_result_dataframes():
    """Tune's fit() ends by reading every trial's result.json (or progress.csv) back into pandas for the
    ResultGrid it returns, which kubetune never reads: its tracker holds every result. On S3, with the
    logger files off, that was four sequential requests a trial after the last one finished (64 on the
    quickstart); locally, parsing each file. Skipped: the ResultGrid's metrics dataframes are empty."""
    from pandas import DataFrame
    from ray.tune.analysis.experiment_analysis import ExperimentAnalysis

    original = ExperimentAnalysis._fetch_trial_dataframes
    ExperimentAnalysis._fetch_trial_dataframes = lambda self: {t.trial_id: DataFrame() for t in self.trials}
    try:
        yield
    finally:
        ExperimentAnalysis._fetch_trial_dataframes = original


@contextlib.contextmanager
def _env_default(key: str, value: str | None):
    """`key=value` in the environment for the block, unless the user set `key` (or value is None)."""
    if value is None or key in os.environ:
        yield
        return
    os.environ[key] = value
    try:
        yield
    finally:
        os.environ.pop(key, None)


def check_feasible(spec: TuneExperimentSpec, cluster: bool) -> None:
    """Refuse, before any trial starts, a trial that can never be placed (SpecError naming the field).

    Locally the embedded Ray's nodes are all there will be. On a cluster the autoscaler may still add
    the spec's worker groups, so a trial must fit either a live node or a worker group.
    """
    import ray

    from kubetune.api.errors import SpecError
    from kubetune.api.feasibility import infeasible, nodes_from_ray, nodes_from_spec

    nodes = nodes_from_ray(ray.nodes())
    if cluster:
        nodes += nodes_from_spec(spec)
    issues = infeasible(spec, nodes, where="Ray node")
    if issues:
        raise SpecError(issues)


def with_storage_uri(experiment: TuneExperiment, uri: str) -> TuneExperiment:
    """The experiment with spec.storage.uri replaced, validated as if the file said so (--storage)."""
    from kubetune.api.load import load_experiment

    document = experiment.dump()
    document["spec"].setdefault("storage", {})["uri"] = uri
    return load_experiment(document, "--storage")


def _conclude(spec: TuneExperimentSpec, snapshot: Snapshot, stopper: ObjectiveStopper, uri: str, restored: bool) -> Outcome:
    counts = snapshot.counts
    metric = spec.objective.metric

    def outcome(status: str, message: str, code: int) -> Outcome:
        return Outcome(status, message, snapshot, uri, restored, exit_code=code)

    if stopper.missing_metric is not None:
        reported = ", ".join(stopper.missing_metric) or "nothing but Tune's own keys"
        return outcome("failed", (
            f"spec.objective.metric: the trainable never reported {metric!r} in its first result; "
            f"it reported: {reported}"
        ), exitcodes.BAD_SPEC)
    if snapshot.interrupted_by:
        signum = {"SIGINT": 2, "SIGTERM": 15}.get(snapshot.interrupted_by, 2)
        return outcome("interrupted", (
            f"interrupted by {snapshot.interrupted_by}: {counts_text(counts)}; "
            "the experiment is saved, run the same command again to resume"
        ), exit_code(signum))
    finished = counts[TrialState.TERMINATED] + counts[TrialState.STOPPED]
    if finished == 0 and counts[TrialState.ERROR] > 0:
        return outcome("failed", f"all {counts['error']} trial(s) failed: {errors_text(snapshot)}",
                       exitcodes.ALL_TRIALS_FAILED)
    if stopper.goal_reached_by is not None and spec.stop.on_goal == "experiment":
        return outcome("succeeded", f"trial {stopper.goal_reached_by} reached the goal {metric} = {spec.objective.goal}",
                       exitcodes.OK)
    budget_s = spec.stop.time_budget_seconds
    if budget_s is not None and snapshot.elapsed_s >= budget_s * 0.98 and snapshot.best is not None:
        return outcome("succeeded", f"time budget of {budget_s:g} s used; {counts_text(counts)}", exitcodes.OK)
    if snapshot.best is None:
        return outcome("failed", f"no trial reported a finite number for {metric!r}; {counts_text(counts)}",
                       exitcodes.ALL_TRIALS_FAILED)
    if counts["running"] or counts["pending"] or counts["interrupted"]:
        return outcome("interrupted", "stopped before every trial finished; run the same command again to resume",
                       exitcodes.CRASHED)
    return outcome("succeeded", counts_text(counts), exitcodes.OK)


def counts_text(counts: dict[str, int]) -> str:
    """e.g. "6 trial(s) finished, 2 stopped early, 1 failed" (states with no trial left out)."""
    words = [
        (TrialState.TERMINATED, "finished"), (TrialState.STOPPED, "stopped early"), (TrialState.ERROR, "failed"),
        (TrialState.INTERRUPTED, "interrupted"), (TrialState.RUNNING, "running"), (TrialState.PENDING, "not started"),
    ]
    parts = [f"{counts[state]} {word}" for state, word in words if counts.get(state)]
    if not parts:
        return "no trial ran"
    parts[0] = parts[0].replace(" ", " trial(s) ", 1)
    return ", ".join(parts)


def errors_text(snapshot: Snapshot, limit: int = 3) -> str:
    """Errored trials grouped by error, e.g. "RuntimeError: boom (4 trials: a1, b2, ...)"."""
    groups = snapshot.errors()
    parts = []
    for text, ids in groups[:limit]:
        shown = ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")
        parts.append(f"{text} ({len(ids)} trial(s): {shown})")
    if len(groups) > limit:
        parts.append(f"and {len(groups) - limit} other error(s)")
    return "; ".join(parts)


def results_document(name: str, spec: TuneExperimentSpec, outcome: Outcome) -> dict[str, Any]:
    best = outcome.best
    return {
        "experiment": name,
        "status": outcome.status,
        "message": outcome.message,
        "objective": {"metric": spec.objective.metric, "mode": spec.objective.mode, "goal": spec.objective.goal},
        "interrupted": outcome.snapshot.interrupted_by,
        "counts": outcome.snapshot.counts,
        "bestTrial": best.to_dict() if best else None,
        "bestTrialRule": BEST_TRIAL_RULE,
        "errors": [{"error": text, "trials": ids} for text, ids in outcome.snapshot.errors()],
        "warnings": outcome.snapshot.warnings,
        "trials": [_with_history(t.to_dict(), outcome.snapshot.history.get(t.id))
                   for t in sorted(outcome.snapshot.trials, key=lambda t: best_key(t, spec.objective.mode))],
    }


def _with_history(trial: dict[str, Any], history: TrialHistory | None) -> dict[str, Any]:
    """A trial's entry with every iteration it reported (rows as in Tune's result.json, a few keys each)."""
    trial["history"] = history.rows if history else []
    if history and history.dropped:
        trial["historyDropped"] = history.dropped  # the oldest rows, past KUBETUNE_HISTORY_ROWS
    return trial


def _write_results(storage: ResolvedStorage, name: str, spec: TuneExperimentSpec, outcome: Outcome) -> None:
    doc = results_document(name, spec, outcome)
    storage.write_json(f"{name}/{RESULTS_FILE}", doc)
    storage.write_json(f"{name}/{BEST_FILE}", doc["bestTrial"])
