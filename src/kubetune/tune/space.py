"""Pure translation of the spec into Ray Tune objects: search space, searcher, scheduler, stoppers.

Factories are keyed by the names the spec allows and import optional libraries lazily, as Ray
Tune's own registries do; the spec model has already rejected unknown names.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable

from ray import tune
from ray.tune.schedulers import (
    ASHAScheduler,
    FIFOScheduler,
    HyperBandScheduler,
    MedianStoppingRule,
    PopulationBasedTraining,
    TrialScheduler,
)
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, SearchAlgorithm, Searcher
from ray.tune.search.basic_variant import _TrialIterator
from ray.tune.search.search_generator import SearchGenerator
from ray.tune.search.variant_generator import _count_spec_samples

from kubetune.api.spec import Parameter, TuneExperimentSpec

TIME_ATTR = "training_iteration"


# ---------------------------------------------------------------- search space


def build_domain(param: Parameter, grid_as_choice: bool = False) -> Any:
    """One spec parameter -> a Ray Tune domain (int bounds in the spec are inclusive)."""
    kind, b = param.kind, param.body
    builders: dict[str, Callable[[], Any]] = {
        "uniform": lambda: tune.uniform(b.min, b.max),
        "quniform": lambda: tune.quniform(b.min, b.max, b.q),
        "loguniform": lambda: tune.loguniform(b.min, b.max),
        "qloguniform": lambda: tune.qloguniform(b.min, b.max, b.q),
        "randn": lambda: tune.randn(b.mean, b.sd),
        "qrandn": lambda: tune.qrandn(b.mean, b.sd, b.q),
        "randint": lambda: tune.randint(b.min, b.max + 1),  # Ray's upper bound is exclusive
        "qrandint": lambda: tune.qrandint(b.min, b.max, b.q),  # ... and inclusive here
        "lograndint": lambda: tune.lograndint(b.min, b.max + 1),
        "qlograndint": lambda: tune.qlograndint(b.min, b.max, b.q),
        "choice": lambda: tune.choice(list(b)),
        "grid": lambda: tune.choice(list(b)) if grid_as_choice else tune.grid_search(list(b)),
        "powersOfTwo": lambda: tune.choice(b.values()),
    }
    return builders[kind]()


def build_param_space(spec: TuneExperimentSpec) -> dict[str, Any]:
    """The trainable's fixed config with every parameter's domain on top.

    With the grid algorithm every discrete parameter is enumerated (Katib's grid); otherwise only
    `grid` parameters are, and `choice` ones are sampled.
    """
    space: dict[str, Any] = dict(spec.trainable.config)
    for name, param in spec.parameters.items():
        if spec.search.algorithm == "grid" and param.kind in ("choice", "powersOfTwo"):
            values = param.body if param.kind == "choice" else param.body.values()
            space[name] = tune.grid_search(list(values))
        else:
            space[name] = build_domain(param)
    return space


# ---------------------------------------------------------------- searchers


class _Extendable:
    """A search algorithm that a restore can extend to more samples (Katib's LongRunning).

    Tune restores a search algorithm with the sample count it was saved with; the driver sets
    `extend_to` (the spec's trial budget) before `fit()`, and the restored state is raised to it.
    """

    extend_to: int | None = None

    def set_state(self, state):  # called by restore_from_dir
        super().set_state(state)
        if self.extend_to is not None and self.extend_to > self._total_samples:
            self._extend(self.extend_to - self._total_samples)
            self._finished = False


class ExtendableVariantGenerator(_Extendable, BasicVariantGenerator):
    """Random and grid search (BasicVariantGenerator) that can grow its sample count on restore."""

    def _extend(self, extra_trials: int) -> None:
        template = self._iterators[-1]
        grid = _count_spec_samples(template.unresolved_spec, num_samples=1)
        iterator = _TrialIterator(
            uuid_prefix=self._uuid_prefix,
            num_samples=-(-extra_trials // grid),
            unresolved_spec=template.unresolved_spec,
            constant_grid_search=self._constant_grid_search,
            start=self._total_samples,
            random_state=self._random_state,
        )
        self._iterators.append(iterator)
        self._total_samples += iterator.num_samples * grid
        self._trial_generator = itertools.chain(self._trial_generator, iterator)


class ExtendableSearchGenerator(_Extendable, SearchGenerator):
    """Model-based searchers (wrapped as Tune wraps them) that can grow their sample count on restore."""

    def _extend(self, extra_trials: int) -> None:
        self._total_samples += extra_trials


def _or(value: Any, default: Any) -> Any:
    """`value`, or `default` when the spec leaves it unset (0 and False are values)."""
    return default if value is None else value


def _random(spec: TuneExperimentSpec) -> SearchAlgorithm:
    s = spec.search
    return ExtendableVariantGenerator(
        points_to_evaluate=s.points_to_evaluate or None,
        max_concurrent=s.max_concurrent_trials or 0,
        random_state=s.seed,
    )


def _hyperopt(spec: TuneExperimentSpec) -> Searcher:
    from ray.tune.search.hyperopt import HyperOptSearch

    s = spec.search
    return HyperOptSearch(
        points_to_evaluate=s.points_to_evaluate or None,
        n_initial_points=_or(s.random_warmup_steps, 20),
        random_state_seed=s.seed,
    )


def _optuna(spec: TuneExperimentSpec) -> Searcher:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    s = spec.search
    sampler = optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=_or(s.random_warmup_steps, 10))
    return OptunaSearch(points_to_evaluate=s.points_to_evaluate or None, sampler=sampler)


def _bayesopt(spec: TuneExperimentSpec) -> Searcher:
    from ray.tune.search.bayesopt import BayesOptSearch

    s = spec.search
    return BayesOptSearch(
        points_to_evaluate=s.points_to_evaluate or None,
        random_state=_or(s.seed, 42),
        random_search_steps=_or(s.random_warmup_steps, 10),
    )


SEARCHERS: dict[str, Callable[[TuneExperimentSpec], Searcher | SearchAlgorithm]] = {
    "random": _random,
    "grid": _random,
    "hyperopt": _hyperopt,
    "optuna": _optuna,
    "bayesopt": _bayesopt,
}


def build_searcher(spec: TuneExperimentSpec) -> SearchAlgorithm:
    """The search algorithm: model-based searchers behind a ConcurrencyLimiter when
    maxConcurrentTrials is set (BasicVariantGenerator limits concurrency itself)."""
    searcher = SEARCHERS[spec.search.algorithm](spec)
    if isinstance(searcher, SearchAlgorithm):
        return searcher
    limit = spec.search.max_concurrent_trials
    if limit:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=limit)
    return ExtendableSearchGenerator(searcher)


# ---------------------------------------------------------------- schedulers


def max_iterations(spec: TuneExperimentSpec) -> int | None:
    """The most iterations a trial runs: stop.maxIterations, else the scheduler's maxT."""
    return spec.stop.max_iterations or spec.scheduler.max_t


def _asha_settings(spec: TuneExperimentSpec) -> dict[str, Any]:
    s = spec.scheduler
    return {"max_t": _or(s.max_t, spec.stop.max_iterations or 100), "grace_period": _or(s.grace_period, 1),
            "reduction_factor": _or(s.reduction_factor, 4), "brackets": _or(s.brackets, 1)}


def _asha(spec: TuneExperimentSpec) -> TrialScheduler:
    return ASHAScheduler(time_attr=TIME_ATTR, **_asha_settings(spec))


def asha_milestones(max_t: int, grace_period: int, reduction_factor: float, brackets: int) -> list[int]:
    """The iterations at which ASHA may stop a trial (its rungs, over all brackets; as Ray's _Bracket)."""
    found: set[int] = set()
    for s in range(brackets):
        rungs = int(math.log(max_t / grace_period) / math.log(reduction_factor) - s + 1)
        found |= {int(grace_period * reduction_factor ** (k + s)) for k in range(rungs)}
    return sorted(found)


def result_pipelining(spec: TuneExperimentSpec) -> tuple[bool, list[int], int | None]:
    """Whether a trial may compute its next iteration while the driver handles its last result, and
    the iterations after which it must wait for the driver's decision instead.

    Ray Tune makes a trial wait for the driver after every result, so that a scheduler can stop or
    pause it right there; that round trip (the driver's callbacks, two Ray messages) is idle time for
    the trial on every iteration. Without a scheduler (fifo), or with ASHA, the only results a
    decision can follow are known in advance: ASHA's rungs and the last iteration (stop.maxIterations,
    maxT), so the trial waits only there. Schedulers that pause or stop at any result (HyperBand,
    medianStopping, PBT, PB2) and distributed trials keep Tune's wait after every result. A trial
    stopped by the goal or the time budget may have computed one iteration more (not reported).
    Returns (pipelined, hold_at, hold_from).
    """
    if spec.distributed is not None or spec.scheduler.type not in ("fifo", "asha"):
        return False, [], None
    if spec.scheduler.type == "fifo":
        return True, [], max_iterations(spec)
    settings = _asha_settings(spec)
    return True, asha_milestones(**settings), min(settings["max_t"], max_iterations(spec) or settings["max_t"])


def _hyperband(spec: TuneExperimentSpec) -> TrialScheduler:
    s = spec.scheduler
    return HyperBandScheduler(
        time_attr=TIME_ATTR,
        max_t=_or(s.max_t, spec.stop.max_iterations or 81),
        reduction_factor=_or(s.reduction_factor, 3),
    )


def _median(spec: TuneExperimentSpec) -> TrialScheduler:
    s = spec.scheduler
    return MedianStoppingRule(
        time_attr=TIME_ATTR,
        grace_period=_or(s.grace_period, 1),
        min_samples_required=_or(s.min_samples_required, 3),
    )


def build_mutations(spec: TuneExperimentSpec) -> dict[str, Any]:
    """PBT's hyperparam_mutations: Ray domains for distributions, lists as they are."""
    return {
        name: list(m) if isinstance(m, list) else build_domain(m, grid_as_choice=True)
        for name, m in (spec.scheduler.hyperparam_mutations or {}).items()
    }


def _pbt(spec: TuneExperimentSpec) -> TrialScheduler:
    s = spec.scheduler
    return PopulationBasedTraining(
        time_attr=TIME_ATTR,
        perturbation_interval=s.perturbation_interval,
        hyperparam_mutations=build_mutations(spec),
        quantile_fraction=_or(s.quantile_fraction, 0.25),
        resample_probability=_or(s.resample_probability, 0.25),
    )


def _pb2(spec: TuneExperimentSpec) -> TrialScheduler:
    from ray.tune.schedulers.pb2 import PB2

    s = spec.scheduler
    return PB2(
        time_attr=TIME_ATTR,
        perturbation_interval=s.perturbation_interval,
        hyperparam_bounds={k: list(v) for k, v in (s.hyperparam_bounds or {}).items()},
        quantile_fraction=_or(s.quantile_fraction, 0.25),
    )


SCHEDULERS: dict[str, Callable[[TuneExperimentSpec], TrialScheduler]] = {
    "fifo": lambda spec: FIFOScheduler(),
    "asha": _asha,
    "hyperband": _hyperband,
    "medianStopping": _median,
    "pbt": _pbt,
    "pb2": _pb2,
}


def build_scheduler(spec: TuneExperimentSpec) -> TrialScheduler:
    return SCHEDULERS[spec.scheduler.type](spec)
