"""A workload that only sleeps: for benchmarks, tests and trying out schedulers without a GPU.

Each iteration sleeps `sleep_s` and reports `score`, a deterministic function of the config
parameter `x` and the iteration: it rises with every iteration towards a ceiling that is highest
for x = 0.5, so a search over `x` has a known answer and schedulers have curves to compare.

    trainable:
      entrypoint: kubetune_trials.sleep:train
      config: {iterations: 20, sleep_s: 0.05}
    parameters:
      x: {uniform: {min: 0, max: 1}}
    objective: {metric: score, mode: max}

It checkpoints a tiny state (the iteration and the score so far) and, when restored (a retry,
a PBT exploit), continues from the restored iteration instead of starting over.

Config keys: `x` (0.5), `iterations` (20), `sleep_s` (0.05), `fail_at` (unset: for testing
retries, raise an error at this iteration unless the trial was restored from a checkpoint).
`dataset` and `smoke` are accepted and ignored. It imports no torch, so it starts fast.
"""

from __future__ import annotations

import time
from typing import Any

from kubetune import trial


def score(x: float, iteration: int) -> float:
    """The metric after `iteration` (1-based) iterations: approaches 1 - (x - 0.5)^2."""
    return (1.0 - (x - 0.5) ** 2) * (1.0 - 0.9**iteration)


def train(config: dict[str, Any]) -> None:
    x = float(config.get("x", 0.5))
    iterations = int(config.get("iterations", 20))
    sleep_s = float(config.get("sleep_s", 0.05))
    fail_at = config.get("fail_at")

    state = trial.load_state()  # None on a fresh start
    done = int(state["iteration"]) if state else 0  # iterations completed before the restore
    restored = state is not None

    for iteration in range(done + 1, iterations + 1):
        time.sleep(sleep_s)
        if fail_at is not None and iteration == int(fail_at) and not restored:
            raise RuntimeError(f"sleep trainable: failing at iteration {iteration} as configured (fail_at)")
        value = score(x, iteration)
        trial.report(
            {"score": value, "loss": 1.0 - value, "iteration": iteration, "restored": restored},
            state={"iteration": iteration, "score": value},
            final=(iteration == iterations),
        )
