"""Trainables for the metrics tests (importable by Ray workers as tests.metric_trainables)."""

import time

from kubetune import trial


def curve(config):
    """score = x * i; checkpoints every iteration; `fail_x` always fails, `flaky_x` fails once at iteration 2."""
    state = trial.load_state() or {"i": 0}
    if config["x"] == config.get("fail_x"):
        raise RuntimeError("failing on purpose")
    for i in range(state["i"] + 1, config.get("iterations", 4) + 1):
        if config["x"] == config.get("flaky_x") and i == 2 and state["i"] == 0:
            raise RuntimeError("failing once on purpose")
        time.sleep(config.get("sleep_s", 0.05))
        trial.report({"score": config["x"] * i}, state={"i": i}, samples=64)


def quick(config):
    """One result, nothing else: for counting series."""
    trial.report({"score": config["x"]})
