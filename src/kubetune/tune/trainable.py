"""How the driver builds the trainable Tune runs: the checked entrypoint, the trial's context and resources.

What runs inside the trial's actor (the isolation of reused actors) is kubetune.tune.trial_runtime,
which imports nothing heavy so that a new actor starts fast.
"""

from __future__ import annotations

from typing import Any, Callable

from kubetune import trial
from kubetune.api.errors import FieldIssue, SpecError
from kubetune.api.spec import TuneExperimentSpec
from kubetune.tune.space import max_iterations, result_pipelining
from kubetune.tune.trial_runtime import MissingEntrypoint, isolated, load_entrypoint, trial_function, trial_seed

__all__ = ["build_trainable", "import_entrypoint", "isolated", "trial_context", "trial_resources", "trial_seed"]


def import_entrypoint(entrypoint: str) -> Callable[[dict[str, Any]], Any]:
    """"pkg.module:function" -> the function; errors name spec.trainable.entrypoint."""
    module_name, _, attr = entrypoint.partition(":")
    try:
        fn = load_entrypoint(entrypoint)
    except MissingEntrypoint as exc:
        raise SpecError([FieldIssue("spec.trainable.entrypoint", str(exc))]) from None
    except Exception as exc:  # ImportError, or any error the module raises at import
        raise SpecError([FieldIssue(
            "spec.trainable.entrypoint",
            f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}",
        )]) from None
    if not callable(fn):
        raise SpecError([FieldIssue(
            "spec.trainable.entrypoint", f"module {module_name!r} has no function {attr!r}"
        )])
    problem = _signature_problem(fn)
    if problem:
        raise SpecError([FieldIssue(
            "spec.trainable.entrypoint",
            f"{entrypoint} {problem}; a trainable is a Python function taking the trial's config: def {attr}(config): ...",
        )])
    return fn


def _signature_problem(fn: Any) -> str | None:
    """Why `fn` cannot be called as fn(config), or None. Built-ins (os:system) and classes are refused:
    they would take the config dict and fail in every trial."""
    import inspect

    if inspect.isclass(fn):
        return "is a class, not a function"
    if not (inspect.isfunction(fn) or inspect.ismethod(fn)):
        return f"is a {type(fn).__name__}, not a Python function"
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return "has no readable signature"
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    required_kw = [p for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty]
    takes_varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
    if required_kw:
        return f"needs keyword argument(s) {', '.join(p.name for p in required_kw)}"
    if len(required) > 1:
        return f"takes {len(required)} arguments ({', '.join(p.name for p in required)})"
    if not positional and not takes_varargs:
        return "takes no argument"
    return None


def trial_context(spec: TuneExperimentSpec) -> trial.TrialContext:
    """What every trial of this experiment is told (trial id and seed are added per trial)."""
    distributed = None
    if spec.distributed is not None:
        d = spec.distributed
        distributed = {
            "workers": d.workers,
            "cpus_per_worker": spec.trial_resources.cpu,
            "gpus_per_worker": d.gpus_per_worker if d.gpus_per_worker is not None else spec.trial_resources.gpu,
            "backend": d.backend,
        }
    pipelined, hold_at, hold_from = result_pipelining(spec)
    return trial.TrialContext(
        checkpoint_frequency=spec.checkpoint.frequency,
        checkpoint_at_end=spec.checkpoint.at_end,
        max_iterations=max_iterations(spec),
        seed=spec.search.seed,
        distributed=distributed,
        pipelined=pipelined,
        hold_at=tuple(hold_at),
        hold_from=hold_from,
    )


# Trials that coordinate a TorchTrainer only wait for its workers; they still need a non-zero CPU
# share for Ray to place them.
COORDINATOR_CPU = 0.01


def trial_resources(spec: TuneExperimentSpec) -> dict[str, float]:
    """Ray resources of one trial's actor."""
    if spec.distributed is not None:
        return {"cpu": COORDINATOR_CPU}
    resources: dict[str, float] = {"cpu": spec.trial_resources.cpu, "gpu": spec.trial_resources.gpu}
    if spec.trial_resources.memory is not None:
        from kubetune.api.spec import quantity_to_bytes

        resources["memory"] = quantity_to_bytes(spec.trial_resources.memory)
    return resources


def build_trainable(spec: TuneExperimentSpec):
    """The Tune trainable for the spec: the isolated entrypoint, with the trial's resources."""
    from ray import tune

    run_trial = trial_function(spec.trainable.entrypoint, trial_context(spec), list(spec.parameters))
    return tune.with_resources(run_trial, trial_resources(spec))
