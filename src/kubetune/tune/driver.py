"""The driver: run (or resume) one TuneExperiment on Ray and write its results to storage.

The same code runs behind `kubetune run` (an embedded Ray on this machine) and `kubetune driver`
(the driver pod on a cluster, connected to the RayCluster).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

from kubetune.api.spec import TuneExperiment, TuneExperimentSpec
from kubetune.tune.storage import ResolvedStorage, check_storage, resolve_storage
from kubetune.tune.tracking import ExperimentTracker, ObjectiveStopper, Snapshot, TrialRecord

log = logging.getLogger("kubetune.driver")

RESULTS_FILE = "kubetune-results.json"
BEST_FILE = "kubetune-best-trial.json"

# Environment for Ray Tune, set before Ray starts unless the user set it.
RAY_ENV_DEFAULTS = {
    # kubetune checks the objective metric itself, with a message naming the field.
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    # Save the experiment state after every controller step (Ray's default: every >= 10 s), so a
    # driver killed at any point resumes with every finished trial; it costs no measurable time
    # (bench/), the state is small and uploaded in the background.
    "TUNE_GLOBAL_CHECKPOINT_S": "0",
    "RAY_AIR_NEW_OUTPUT": "0",
    # A reused actor waits this long for the previous trial's thread (a DDP trial's clean-up takes
    # more than Ray's 2 s; past it Tune starts a fresh actor and logs a warning).
    "TUNE_FUNCTION_THREAD_TIMEOUT_S": "10",
    "RAY_DEDUP_LOGS": "0",
}


@dataclass
class Outcome:
    """How a run ended: succeeded, failed or interrupted; what was found; where it is stored."""

    status: str
    message: str
    snapshot: Snapshot
    experiment_uri: str
    restored: bool
    results_uri: str | None = None

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


class _TempFileSyncRace(logging.Filter):
    """Drop Ray's warning about a sync that raced an atomic write of the experiment state.

    Saving the state after every step (TUNE_GLOBAL_CHECKPOINT_S=0) means a background upload can
    list a `-tmp-` file that the next save renames away; that upload fails, the next one copies the
    complete state. The warning is a traceback about a file nobody needs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("Last sync command failed" in text and "FileNotFoundError" in text and "-tmp-" in text)


def ensure_ray(address: str | None = None, num_cpus: int | None = None, log_to_driver: bool = False) -> bool:
    """Connect to `address` (a cluster) or start an embedded Ray; True if this call started it."""
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": log_to_driver}
    logging.getLogger("ray.train._internal.syncer").addFilter(_TempFileSyncRace())
    # Ray announces its (default, kept) token authentication on every start; it is not news to a user.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)
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
    metrics: bool = True,
) -> Outcome:
    """Run the experiment to the end, or resume it when its storage already holds it.

    Raises SpecError (bad entrypoint), StorageError (unreachable storage) before any trial starts.
    """
    from ray import tune

    from kubetune.tune.space import build_param_space
    from kubetune.tune.telemetry import observer_for
    from kubetune.tune.trainable import build_trainable, import_entrypoint

    spec, name = experiment.spec, experiment.metadata.name
    storage = resolve_storage(spec.storage, storage_override)
    check_storage(storage)
    importable_cwd()
    import_entrypoint(spec.trainable.entrypoint)
    ensure_ray(address=address, num_cpus=num_cpus)

    trainable = build_trainable(spec)
    param_space = build_param_space(spec)
    stopper = build_stopper(spec)
    tracker = ExperimentTracker(
        metric=spec.objective.metric,
        mode=spec.objective.mode,
        budget=trial_budget(spec),
        parameter_names=list(spec.parameters),
        storage=(storage.uri, storage.root),
        sinks=list(sinks or []),
    )
    callbacks = [tracker, observer_for(experiment, storage, tracker.budget, export=metrics)]
    experiment_path = storage.experiment_path(name)
    experiment_uri = storage.experiment_uri(name)
    restored = tune.Tuner.can_restore(experiment_path, storage_filesystem=storage.filesystem)
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
        # stopper replace the old ones, and a raised numSamples extends the search.
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
    tuner.fit()
    # The tracker's last snapshot was taken at on_experiment_end, with every trial's final state.
    snapshot = tracker.snapshot
    outcome = _conclude(spec, snapshot, stopper, experiment_uri, restored)
    _write_results(storage, name, spec, outcome)
    outcome.results_uri = f"{experiment_uri}/{RESULTS_FILE}"
    return outcome


def _conclude(spec: TuneExperimentSpec, snapshot: Snapshot, stopper: ObjectiveStopper, uri: str, restored: bool) -> Outcome:
    counts = snapshot.counts
    metric = spec.objective.metric
    if stopper.missing_metric is not None:
        reported = ", ".join(stopper.missing_metric) or "nothing but Tune's own keys"
        return Outcome("failed", (
            f"spec.objective.metric: the trainable never reported {metric!r} in its first result; "
            f"it reported: {reported}"
        ), snapshot, uri, restored)
    if counts["terminated"] == 0 and counts["error"] > 0:
        first = next((t.error for t in snapshot.trials if t.error), "")
        return Outcome("failed", f"all {counts['error']} trial(s) failed; first error: {first}", snapshot, uri, restored)
    if stopper.goal_reached_by is not None and spec.stop.on_goal == "experiment":
        return Outcome("succeeded", f"trial {stopper.goal_reached_by} reached the goal {metric} = {spec.objective.goal}",
                       snapshot, uri, restored)
    budget_s = spec.stop.time_budget_seconds
    if budget_s is not None and snapshot.elapsed_s >= budget_s * 0.98 and snapshot.best is not None:
        return Outcome("succeeded", f"time budget of {budget_s:g} s used; {counts['terminated']} trial(s) finished",
                       snapshot, uri, restored)
    if snapshot.best is None:
        return Outcome("failed", f"no trial reported a numeric {metric!r}", snapshot, uri, restored)
    if counts["running"] or counts["pending"]:
        return Outcome("interrupted", "stopped before every trial finished; run the same command again to resume",
                       snapshot, uri, restored)
    return Outcome("succeeded", f"{counts['terminated']} trial(s) finished, {counts['error']} failed", snapshot, uri, restored)


def results_document(name: str, spec: TuneExperimentSpec, outcome: Outcome) -> dict[str, Any]:
    best = outcome.best
    return {
        "experiment": name,
        "status": outcome.status,
        "message": outcome.message,
        "objective": {"metric": spec.objective.metric, "mode": spec.objective.mode, "goal": spec.objective.goal},
        "counts": outcome.snapshot.counts,
        "bestTrial": best.to_dict() if best else None,
        "trials": [t.to_dict() for t in outcome.snapshot.trials],
    }


def _write_results(storage: ResolvedStorage, name: str, spec: TuneExperimentSpec, outcome: Outcome) -> None:
    doc = results_document(name, spec, outcome)
    storage.write_json(f"{name}/{RESULTS_FILE}", doc)
    storage.write_json(f"{name}/{BEST_FILE}", doc["bestTrial"])
