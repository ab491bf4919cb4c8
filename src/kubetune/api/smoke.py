"""`--smoke`: the overrides that shrink any experiment to a quick CPU check (tests use them too)."""

from __future__ import annotations

from kubetune.api.spec import TuneExperiment

SMOKE_TRIALS = 2
SMOKE_ITERATIONS = 2


def smoke_overrides(experiment: TuneExperiment) -> list[str]:
    """`--set` items: tiny generated data, 2 trials of 2 iterations, no GPUs, small CPU shares."""
    spec = experiment.spec
    dataset = spec.trainable.config.get("dataset")
    items = [
        "spec.trainable.config.smoke=true",
        f"spec.search.numSamples={min(spec.search.num_samples, SMOKE_TRIALS)}",
        f"spec.stop.maxIterations={SMOKE_ITERATIONS}",
        "spec.trialResources.gpu=0",
        "spec.stop.timeBudgetSeconds=null",
    ]
    if dataset != "digits":
        items.append("spec.trainable.config.dataset=synthetic")
    for key in ("epochs", "iterations"):
        if key in spec.trainable.config:
            items.append(f"spec.trainable.config.{key}={SMOKE_ITERATIONS}")
    sched = spec.scheduler
    if sched.max_t is not None:
        items.append(f"spec.scheduler.maxT={SMOKE_ITERATIONS}")
    if sched.grace_period is not None:
        items.append("spec.scheduler.gracePeriod=1")
    if sched.perturbation_interval is not None:
        items.append(f"spec.scheduler.perturbationInterval={spec.checkpoint.frequency or 1}")
    if spec.distributed is not None:
        # Two workers at half a CPU each fit a 2-CPU machine next to the trial's coordinator
        # (four would not: 4 x 0.5 + 0.01 CPU; api.feasibility says so).
        items += ["spec.distributed.gpusPerWorker=0", "spec.trialResources.cpu=0.5",
                  f"spec.distributed.workers={min(spec.distributed.workers, 2)}"]
    else:
        items.append(f"spec.trialResources.cpu={min(spec.trial_resources.cpu, 1)}")
    if spec.search.max_concurrent_trials is not None:
        items.append(f"spec.search.maxConcurrentTrials={min(spec.search.max_concurrent_trials, 2)}")
    if spec.search.random_warmup_steps is not None:
        items.append("spec.search.randomWarmupSteps=1")
    return items
