"""Trainables for the driver's tests (importable by Ray workers as tests.trainables)."""

import os
import time

from kubetune import trial

# Module state a trial could leak into the next one if actors were reused carelessly.
IMPORT_COUNT = 0
IMPORT_COUNT += 1
SEEN_TRIALS: list = []


def leaky(config):
    """Reports what it sees of earlier trials in the same process, then pollutes the process."""
    SEEN_TRIALS.append(config["x"])
    leaked_env = os.environ.get("KUBETUNE_TEST_LEAK")
    os.environ["KUBETUNE_TEST_LEAK"] = str(config["x"])
    for i in range(2):
        time.sleep(0.05)
        trial.report({
            "score": config["x"] + i,
            "pid": os.getpid(),
            "seen_trials": len(SEEN_TRIALS),
            "import_count": IMPORT_COUNT,
            "leaked_env": leaked_env or "",
        })


def wrong_metric(config):
    for i in range(5):
        trial.report({"acc": 0.1 * i})


def always_fails(config):
    raise RuntimeError("boom from the trainable")


def counter(config):
    """Counts to config["iterations"], checkpointing each step; records starts and completions.

    `config["marks"]` is a directory where it writes `start-<trial>-<n>` (the iteration it resumed
    at) and `done-<trial>`, so a test can tell whether finished work was ever redone.
    """
    from pathlib import Path

    marks = Path(config["marks"])
    marks.mkdir(parents=True, exist_ok=True)
    trial_id = trial.context().trial_id
    state = trial.load_state() or {"i": 0}
    n = len(list(marks.glob(f"start-{trial_id}-*")))
    (marks / f"start-{trial_id}-{n}").write_text(str(state["i"]))
    for i in range(state["i"] + 1, config["iterations"] + 1):
        time.sleep(config.get("sleep_s", 0.1))
        trial.report({"score": config["x"] * i}, state={"i": i})
    (marks / f"done-{trial_id}").write_text("1")


def slow_start(config):
    """Waits before its first report (as a trainable that loads a large dataset does)."""
    time.sleep(config.get("wait_s", 120))
    trial.report({"score": 1.0})


def reports_then_fails(config):
    """Reports the best score of all, then fails: it must never be the best trial."""
    trial.report({"score": 100.0})
    raise ValueError(f"bad batch at x={config['x']}")


def infinite(config):
    """Reports an infinite objective once, then finite ones."""
    trial.report({"score": float("inf"), "aux": float("nan")})
    trial.report({"score": config["x"], "aux": float("-inf")})


def fixed_score(config):
    """The same score for every trial: a tie that only the documented rule can break."""
    for _ in range(config.get("iterations", 2)):
        trial.report({"score": 0.5})


def reads_snake_case(config):
    """Reads batch_size although the experiment samples batchSize; reads lr."""
    batch_size = config.get("batch_size", 32)
    for i in range(2):
        trial.report({"score": config["lr"] * batch_size + i})


def quick_or_slow(config):
    """x < 0.5 finishes at once; the others wait `slow_s` (long enough to read the saved experiment state)."""
    from pathlib import Path

    if config["x"] < 0.5:
        trial.report({"score": config["x"]})
        Path(config["marks"], f"done-{trial.context().trial_id}").write_text("1")
        return
    for i in range(int(config.get("slow_s", 60) / 0.5)):
        time.sleep(0.5)
        trial.report({"score": config["x"]})


def records_iterations(config):
    """Notes each iteration it starts (a line in config["log_dir"]/<trial id>), up to 10, and reports
    whether its results were pipelined (kubetune.tune.trial_runtime.pipeline_results)."""
    from ray.train._internal.session import get_session

    log = os.path.join(config["log_dir"], trial.context().trial_id)
    for i in range(trial.iteration() + 1, 11):
        with open(log, "a") as fh:
            fh.write(f"{i}\n")
        time.sleep(0.01)
        trial.report({"score": config["x"] * i, "pipelined": not get_session().synchronous_result_reporting})


def runtime_env_vars(config):
    """Reports the names of the env_vars in its actor's runtime environment, "(none)" without one."""
    import ray

    names = sorted((ray.get_runtime_context().runtime_env or {}).get("env_vars") or {})
    trial.report({"score": config["x"], "runtime_env_vars": ",".join(names) or "(none)"})
