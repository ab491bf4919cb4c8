"""Every parameter kind, searcher and scheduler name maps to the right Ray Tune object."""

import pytest
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
from ray.tune.search.sample import Categorical, Float, Integer, LogUniform, Normal, Quantized, Uniform

from kubetune.api import load_experiment
from kubetune.tune import space
from kubetune.tune.driver import build_run_config, build_stopper, build_tune_config, trial_budget
from kubetune.tune.storage import resolve_storage
from kubetune.tune.trainable import trial_context, trial_resources


def spec_of(**spec):
    base = {"trainable": {"entrypoint": "tests.trainables:leaky", "config": {"fixed": 1}},
            "objective": {"metric": "score", "mode": "max"}}
    base.update(spec)
    return load_experiment({"apiVersion": "kubetune.io/v1alpha1", "kind": "TuneExperiment",
                            "metadata": {"name": "t"}, "spec": base}).spec


def matches(domain, samplers):
    """The domain's sampler is samplers[0], wrapping samplers[1] when quantized."""
    sampler = domain.get_sampler()
    if not isinstance(sampler, samplers[0]):
        return False
    return len(samplers) == 1 or isinstance(sampler.sampler, samplers[1])


PRIMITIVES = [
    ("uniform", {"min": 0.1, "max": 0.9}, Float, [Uniform], (0.1, 0.9)),
    ("quniform", {"min": 0, "max": 1, "q": 0.25}, Float, [Quantized, Uniform], (0, 1)),
    ("loguniform", {"min": 1e-4, "max": 1e-1}, Float, [LogUniform], (1e-4, 1e-1)),
    ("qloguniform", {"min": 1e-4, "max": 1e-1, "q": 1e-4}, Float, [Quantized, LogUniform], (1e-4, 1e-1)),
    ("randn", {"mean": 1, "sd": 2}, Float, [Normal], None),
    ("qrandn", {"mean": 1, "sd": 2, "q": 0.5}, Float, [Quantized, Normal], None),
    ("randint", {"min": 1, "max": 5}, Integer, [Uniform], (1, 6)),  # inclusive max -> Ray's exclusive 6
    ("qrandint", {"min": 2, "max": 10, "q": 2}, Integer, [Quantized, Uniform], (2, 10)),
    ("lograndint", {"min": 1, "max": 100}, Integer, [LogUniform], (1, 101)),
    ("qlograndint", {"min": 1, "max": 100, "q": 5}, Integer, [Quantized, LogUniform], (1, 100)),
]


@pytest.mark.parametrize("kind,body,domain_type,samplers,bounds", PRIMITIVES, ids=[p[0] for p in PRIMITIVES])
def test_numeric_primitives(kind, body, domain_type, samplers, bounds):
    param_space = space.build_param_space(spec_of(parameters={"p": {kind: body}}))
    domain = param_space["p"]
    assert isinstance(domain, domain_type)
    assert matches(domain, samplers)
    if bounds:
        assert (domain.lower, domain.upper) == bounds
    if "q" in body:
        assert domain.get_sampler().q == body["q"]
    values = [domain.sample() for _ in range(50)]
    if kind in ("randint", "lograndint"):
        assert min(values) >= body["min"] and max(values) <= body["max"]


def test_categorical_primitives_and_fixed_config():
    param_space = space.build_param_space(spec_of(parameters={
        "act": {"choice": ["relu", "tanh"]},
        "l1": {"powersOfTwo": {"min": 4, "max": 32}},
        "seed": {"grid": [1, 2, 3]},
    }))
    assert isinstance(param_space["act"], Categorical) and param_space["act"].categories == ["relu", "tanh"]
    assert param_space["l1"].categories == [4, 8, 16, 32]
    assert param_space["seed"] == {"grid_search": [1, 2, 3]}
    assert param_space["fixed"] == 1


def test_grid_algorithm_enumerates_discrete_parameters():
    spec = spec_of(parameters={"a": {"choice": [1, 2]}, "b": {"powersOfTwo": {"min": 2, "max": 8}}},
                   search={"algorithm": "grid", "numSamples": 2})
    param_space = space.build_param_space(spec)
    assert param_space["a"] == {"grid_search": [1, 2]} and param_space["b"] == {"grid_search": [2, 4, 8]}
    assert trial_budget(spec) == 12


SEARCHERS = {
    "random": "BasicVariantGenerator",
    "grid": "BasicVariantGenerator",
    "hyperopt": "HyperOptSearch",
    "optuna": "OptunaSearch",
    "bayesopt": "BayesOptSearch",
}


@pytest.mark.parametrize("name,cls", SEARCHERS.items())
def test_searchers(name, cls):
    params = {"x": {"uniform": {"min": 0, "max": 1}}} if name != "grid" else {"x": {"choice": [0, 1]}}
    extra = {"randomWarmupSteps": 3} if name in ("hyperopt", "optuna", "bayesopt") else {}
    spec = spec_of(parameters=params, search={"algorithm": name, "seed": 3, "maxConcurrentTrials": 2,
                                              "pointsToEvaluate": [{"x": 0.5 if name != "grid" else 1}], **extra})
    searcher = space.build_searcher(spec)
    if name in ("random", "grid"):
        assert isinstance(searcher, BasicVariantGenerator)
        assert searcher.max_concurrent == 2 and searcher._points_to_evaluate
    else:
        limiter = searcher.searcher  # Tune's SearchGenerator wrapping the limiter
        assert isinstance(limiter, ConcurrencyLimiter) and limiter.max_concurrent == 2
        inner = limiter.searcher
        assert type(inner).__name__ == cls
        if name == "hyperopt":
            assert inner.algo.keywords["n_startup_jobs"] == 3
        if name == "optuna":
            assert inner._sampler._n_startup_trials == 3
        if name == "bayesopt":
            assert inner.random_search_trials == 3 and inner._random_state == 3



@pytest.mark.parametrize("warmup", [None, 0], ids=["unset", "zero"])
def test_searcher_defaults_apply_only_when_unset(warmup):
    """randomWarmupSteps unset: each library's usual warm-up (20, 10, 10) and bayesopt's seed 42; 0 stays 0."""
    def inner(name):
        search = {"algorithm": name} if warmup is None else {"algorithm": name, "randomWarmupSteps": warmup}
        return space.build_searcher(spec_of(parameters={"x": {"uniform": {"min": 0, "max": 1}}}, search=search)).searcher

    assert inner("hyperopt").algo.keywords["n_startup_jobs"] == (20 if warmup is None else 0)
    assert inner("optuna")._sampler._n_startup_trials == (10 if warmup is None else 0)
    bayesopt = inner("bayesopt")
    assert bayesopt.random_search_trials == (10 if warmup is None else 0) and bayesopt._random_state == 42

SCHEDULERS = [
    ({"type": "fifo"}, "FIFOScheduler", {}),
    ({"type": "asha", "maxT": 9, "gracePeriod": 2, "reductionFactor": 3, "brackets": 2}, "AsyncHyperBandScheduler",
     {"_max_t": 9, "_reduction_factor": 3}),
    ({"type": "hyperband", "maxT": 27, "reductionFactor": 3}, "HyperBandScheduler", {"_max_t_attr": 27, "_eta": 3}),
    ({"type": "medianStopping", "gracePeriod": 2, "minSamplesRequired": 4}, "MedianStoppingRule",
     {"_grace_period": 2, "_min_samples_required": 4}),
    ({"type": "pbt", "perturbationInterval": 2, "hyperparamMutations": {"lr": {"loguniform": {"min": 1e-4, "max": 1e-1}}, "bs": [16, 32]}},
     "PopulationBasedTraining", {"_perturbation_interval": 2}),
    ({"type": "pb2", "perturbationInterval": 2, "hyperparamBounds": {"lr": [1e-4, 1e-1]}}, "PB2", {"_perturbation_interval": 2}),
]


@pytest.mark.parametrize("body,cls,attrs", SCHEDULERS, ids=[s[0]["type"] for s in SCHEDULERS])
def test_schedulers(body, cls, attrs):
    scheduler = space.build_scheduler(spec_of(parameters={"lr": {"loguniform": {"min": 1e-4, "max": 1e-1}}}, scheduler=body))
    assert type(scheduler).__name__ == cls
    for attr, value in attrs.items():
        assert getattr(scheduler, attr) == value
    if cls == "AsyncHyperBandScheduler":
        assert len(scheduler._brackets) == 2 and scheduler._time_attr == "training_iteration"
    if cls == "PopulationBasedTraining":
        assert isinstance(scheduler._hyperparam_mutations["lr"], Float)
        assert scheduler._hyperparam_mutations["bs"] == [16, 32]


def test_asha_defaults_max_t_to_max_iterations():
    scheduler = space.build_scheduler(spec_of(scheduler={"type": "asha"}, stop={"maxIterations": 7}))
    assert scheduler._max_t == 7


def test_tune_and_run_config(tmp_path):
    spec = spec_of(parameters={"x": {"uniform": {"min": 0, "max": 1}}},
                   search={"numSamples": 5}, stop={"timeBudgetSeconds": 60, "maxIterations": 3},
                   checkpoint={"numToKeep": 2}, failure={"maxRetries": 3})
    tune_config = build_tune_config(spec)
    assert (tune_config.metric, tune_config.mode, tune_config.num_samples) == ("score", "max", 5)
    assert tune_config.reuse_actors is True and tune_config.time_budget_s == 60
    storage = resolve_storage(spec.storage, str(tmp_path))
    run_config = build_run_config(spec, "t", storage, [], build_stopper(spec))
    assert run_config.failure_config.max_failures == 3
    assert run_config.checkpoint_config.num_to_keep == 2
    assert run_config.checkpoint_config.checkpoint_score_attribute == "score"
    assert run_config.storage_path == str(tmp_path)


def test_stopper_goal_max_iterations_and_missing_metric():
    stopper = build_stopper(spec_of(objective={"metric": "score", "mode": "max", "goal": 0.9}, stop={"maxIterations": 3}))
    assert not stopper("a", {"score": 0.5, "training_iteration": 1})
    assert stopper("a", {"score": 0.5, "training_iteration": 3})
    assert not stopper.stop_all()
    assert stopper("b", {"score": 0.95, "training_iteration": 1}) and stopper.stop_all()
    only_trial = build_stopper(spec_of(objective={"metric": "score", "mode": "min", "goal": 0.1}, stop={"onGoal": "trial"}))
    assert only_trial("a", {"score": 0.05}) and not only_trial.stop_all()
    missing = build_stopper(spec_of())
    assert missing("a", {"acc": 1.0, "training_iteration": 1, "time_total_s": 1})
    assert missing.stop_all() and missing.missing_metric == ["acc"]


def test_resources_and_trial_context():
    plain = spec_of(trialResources={"cpu": 2, "gpu": 0.25, "memory": "1Gi"}, checkpoint={"frequency": 5, "atEnd": False},
                    stop={"maxIterations": 10}, search={"seed": 4})
    assert trial_resources(plain) == {"cpu": 2, "gpu": 0.25, "memory": 2**30}
    ctx = trial_context(plain)
    assert (ctx.checkpoint_frequency, ctx.checkpoint_at_end, ctx.max_iterations, ctx.seed) == (5, False, 10, 4)
    ddp = spec_of(trialResources={"cpu": 0.5, "gpu": 1}, distributed={"workers": 4})
    assert trial_resources(ddp) == {"cpu": 0.01}
    assert trial_context(ddp).distributed == {"workers": 4, "cpus_per_worker": 0.5, "gpus_per_worker": 1, "backend": "auto"}


@pytest.mark.parametrize("settings", [(20, 1, 4, 1), (100, 1, 4, 3), (9, 1, 3, 2), (50, 5, 2, 2), (20, 2, 3, 1)])
def test_asha_milestones_are_rays_rungs(settings):
    from ray.tune.schedulers import ASHAScheduler

    max_t, grace, rf, brackets = settings
    ray_asha = ASHAScheduler(metric="m", mode="max", max_t=max_t, grace_period=grace, reduction_factor=rf,
                             brackets=brackets)
    rungs = sorted({milestone for bracket in ray_asha._brackets for milestone, _ in bracket._rungs})
    assert space.asha_milestones(max_t, grace, rf, brackets) == rungs


def test_trials_wait_for_the_driver_only_where_a_decision_can_come():
    fifo = spec_of(stop={"maxIterations": 12})
    assert space.result_pipelining(fifo) == (True, [], 12)
    assert space.result_pipelining(spec_of()) == (True, [], None)  # the trial ends itself
    asha = spec_of(scheduler={"type": "asha", "maxT": 20, "gracePeriod": 1, "reductionFactor": 4})
    assert space.result_pipelining(asha) == (True, [1, 4, 16], 20)
    ctx = trial_context(asha)
    assert ctx.pipelined and ctx.hold_at == (1, 4, 16) and ctx.hold_from == 20
    for kind in ("hyperband", "medianStopping"):  # they may stop (or pause) a trial at any result
        assert space.result_pipelining(spec_of(scheduler={"type": kind}))[0] is False
    pbt = {"type": "pbt", "perturbationInterval": 2, "hyperparamMutations": {"lr": {"uniform": {"min": 0.1, "max": 1}}}}
    assert trial_context(spec_of(scheduler=pbt)).pipelined is False
